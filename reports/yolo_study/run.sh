#!/usr/bin/env bash
# Issue 36 part 5: YOLOv8n from scratch on the embedded detection set, trained by ultralytics' own trainer with
# each arm attached by attach_yolo (CPU-sized: about 25 minutes on 2 cores). Run from the repository root after
# `pip install -e '.[yolo,detection,plots]'`. Resumable: rerun to continue (an interrupted run resumes from its
# last.pt through ultralytics' resume=True).
set -euo pipefail
export YOLO_OFFLINE=1
OUT=${OUT:-reports/yolo_study}
COMMON=(--task yolo --model yolov8n.yaml --image-size 64 --batch-size 8 --epochs 5 --warmup-epochs 1 --seeds 3
        --threads 2 --quiet)
# the arms, each module at its default placement
convattn compare "${COMMON[@]}" --variants se,cbam,eca,coord,steam,aw --out "$OUT/arms"
# placement: CBAM in the backbone only vs in the neck only. The plain network does not depend on --where, so
# these studies take the arms study's baseline runs (copied) instead of training them again.
for part in backbone neck; do
  mkdir -p "$OUT/cbam_$part/runs"
  [ -d "$OUT/cbam_$part/runs/none" ] || cp -r "$OUT/arms/runs/none" "$OUT/cbam_$part/runs/none"
  convattn compare "${COMMON[@]}" --variants cbam --where "$part" --out "$OUT/cbam_$part"
done
# identity check with trained weights: the plain seed-0 network vs the same weights with CBAM attached as identity
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from ultralytics import YOLO
from convattn.integrations.ultralytics import attach_yolo
from convattn.integrations.yolo_data import embedded_yolo_data
out = Path(sys.argv[1]); best = out / "arms/runs/none/seed0/train/weights/best.pt"
kw = dict(data=str(embedded_yolo_data("detect")), imgsz=64, batch=8, workers=0, device="cpu", plots=False,
          verbose=False, project=str((out / "identity_check").resolve()), exist_ok=True)
plain = YOLO(best).val(**kw)
attached = attach_yolo(YOLO(best), "cbam", identity=True)
n = attached.convattn_report.count()
m = attached.val(**kw)
res = dict(weights=str(best.relative_to(out)), modules=n, plain_map50_95=float(plain.box.map),
           attached_map50_95=float(m.box.map), plain_map50=float(plain.box.map50), attached_map50=float(m.box.map50),
           equal=bool(plain.box.map == m.box.map and plain.box.map50 == m.box.map50))
(out / "identity_check.json").write_text(json.dumps(res, indent=2))
print(res)
PY
# the weights are not part of the record (the reports keep final.json, ultralytics' results.csv and args.yaml)
find "$OUT" -name "*.pt" -delete
rm -rf "$OUT/identity_check"
