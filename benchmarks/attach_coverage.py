"""Coverage of ``attach``: architectures from several sources x module kinds -> works / refused / failed.

Every case runs :func:`convattn.models.verify.verify_attach`: modules inserted, identity at insertion (eval and
train mode, <= 1e-5 relative), one SGD step moves inserted parameters, state-dict round trip. Nothing is
downloaded (random init). Third-party sources are used when installed (``pip install efficientnet_pytorch
pretrainedmodels``) and listed as missing otherwise.

    python benchmarks/attach_coverage.py --out benchmarks/results/attach_coverage
    python benchmarks/attach_coverage.py --attach-only ...   # only whether attach inserts (runs on older versions)
"""
from __future__ import annotations

import argparse
import csv
import importlib
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("se", "eca", "cbam", "coord", "gct", "steam", "aw", "se+aw")

TORCHVISION = ("resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "regnet_x_400mf", "regnet_y_400mf",
               "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_v2_s",
               "convnext_tiny", "densenet121", "googlenet", "inception_v3", "mnasnet0_5", "shufflenet_v2_x0_5",
               "squeezenet1_1", "vgg11_bn", "alexnet")
TIMM = ("resnet18d", "seresnext26d_32x4d", "res2net50_26w_4s", "resnest14d", "regnetx_002", "regnety_002",
        "efficientnet_b0", "tf_efficientnet_b0", "mobilenetv3_large_100", "mobilenetv4_conv_small", "mixnet_s",
        "ghostnet_100", "rexnet_100", "cspresnet50", "cspdarknet53", "dla34", "dpn68", "hrnet_w18_small",
        "vovnet39a", "densenet121", "convnext_atto", "repvgg_a0", "nf_resnet26", "resnetv2_50", "xception41",
        "lcnet_050", "fbnetc_100")
EFFICIENTNET_PYTORCH = ("efficientnet-b0", "efficientnet-b1")
PRETRAINEDMODELS = ("se_resnet50", "bninception", "xception", "dpn68", "resnext101_32x4d")
SIZES = {"torchvision:inception_v3": 160, "pretrainedmodels:se_resnet50": 224, "pretrainedmodels:bninception": 224,
         "pretrainedmodels:xception": 96, "pretrainedmodels:resnext101_32x4d": 224, "pretrainedmodels:dpn68": 224}


# --- networks written the way users write them ---

class UserBlock(nn.Module):
    """A residual block as users write it: ``relu(body(x) + shortcut)``."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if cin == cout and stride == 1 else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class UserResNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layers = nn.Sequential(UserBlock(16, 16), UserBlock(16, 32, 2), UserBlock(32, 32), UserBlock(32, 64, 2))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


class UserPlainBlock(nn.Module):
    """Attributes named by the user, the addition in place, a separate projection attribute."""

    def __init__(self, c: int, stride: int = 1) -> None:
        super().__init__()
        out = c * stride
        self.c1, self.n1 = nn.Conv2d(c, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out)
        self.c2, self.n2 = nn.Conv2d(out, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out)
        self.proj = nn.Conv2d(c, out, 1, stride, bias=False) if stride > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.n2(self.c2(torch.relu(self.n1(self.c1(x)))))
        y += x if self.proj is None else self.proj(x)
        return torch.relu(y)


class UserPlainNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.ModuleList([UserPlainBlock(16), UserPlainBlock(16, 2), UserPlainBlock(32)])
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        for b in self.blocks:
            x = b(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class UserFunctionalNet(nn.Module):
    """Residual additions written in the network's own forward: ``x = x + f(x)``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, 2, 1)
        self.f1 = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, 1, 1))
        self.down = nn.Conv2d(32, 64, 3, 2, 1)
        self.f2 = nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1), nn.BatchNorm2d(64))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = x + self.f1(x)
        x = F.relu(self.down(x))
        x = F.relu(x + self.f2(x))
        return self.fc(x.mean((2, 3)))


class UserVGG(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in (16, 32, 64):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class UserDenseNet(nn.Module):
    """Dense connections: each layer's output concatenated to its input."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layers = nn.ModuleList([nn.Sequential(nn.BatchNorm2d(16 + 8 * i), nn.ReLU(),
                                                   nn.Conv2d(16 + 8 * i, 8, 3, padding=1)) for i in range(3)])
        self.fc = nn.Linear(40, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.fc(x.mean((2, 3)))


USER = {"residual_block_class": UserResNet, "plain_block_inplace_add": UserPlainNet,
        "functional_x_plus_f": UserFunctionalNet, "vgg_like": UserVGG, "dense_cat": UserDenseNet}


def architectures() -> list[tuple[str, Callable[[], nn.Module] | None, str]]:
    """(name, builder or None, note) for every architecture; None: its package is not installed."""
    import timm
    import torchvision
    out: list[tuple[str, Callable[[], nn.Module] | None, str]] = []
    for a in TORCHVISION:
        extra = {"aux_logits": False, "init_weights": True} if a in ("googlenet", "inception_v3") else {}
        out.append((f"torchvision:{a}", lambda a=a, e=extra: torchvision.models.get_model(a, weights=None,
                                                                                          num_classes=10, **e), ""))
    for a in TIMM:
        out.append((f"timm:{a}", lambda a=a: timm.create_model(a, num_classes=10), ""))
    for pkg, names, make in (("efficientnet_pytorch", EFFICIENTNET_PYTORCH, _effnet_pytorch),
                             ("pretrainedmodels", PRETRAINEDMODELS, _pretrainedmodels)):
        try:
            importlib.import_module(pkg)
        except ImportError:
            out += [(f"{pkg}:{a}", None, f"{pkg} not installed") for a in names]
            continue
        out += [(f"{pkg}:{a}", lambda a=a, make=make: make(a), "") for a in names]
    out += [(f"user:{n}", cls, "") for n, cls in USER.items()]
    return out


def _effnet_pytorch(name: str) -> nn.Module:
    from efficientnet_pytorch import EfficientNet
    return EfficientNet.from_name(name, num_classes=10)


def _pretrainedmodels(name: str) -> nn.Module:
    import pretrainedmodels
    return pretrainedmodels.__dict__[name](num_classes=1000, pretrained=None)


def run_case(name: str, build: Callable[[], nn.Module], kind: str, attach_only: bool) -> dict[str, Any]:
    attn = "+".join(p for p in kind.split("+") if p != "aw") or None
    conv = "aw" if "aw" in kind.split("+") else None
    size = SIZES.get(name, 64)
    if attach_only:
        from convattn import attach
        try:
            m = attach(build(), attn, conv)
            return dict(status="ok", inserted=m.convattn_report.count(), reason="")
        except Exception as e:  # noqa: BLE001 - old versions raise anything; recorded
            return dict(status="refused", inserted=0, reason=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    from convattn.models.verify import verify_attach
    try:
        return verify_attach(build, attn, conv, input_size=size)
    except Exception as e:  # noqa: BLE001 - a crash is a failure of attach, recorded with its reason
        return dict(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/attach_coverage")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--only", default="", help="comma-separated substrings of architecture names")
    ap.add_argument("--attach-only", action="store_true", help="only whether attach inserts (any version)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    kinds = [k for k in args.kinds.split(",") if k]
    archs = [a for a in architectures() if not args.only or any(s in a[0] for s in args.only.split(","))]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    for name, build, note in archs:
        for kind in kinds:
            if build is None:
                row = dict(status="missing", reason=note)
            else:
                t = time.time()
                row = run_case(name, build, kind, args.attach_only)
                row["seconds"] = round(time.time() - t, 1)
            row = {"arch": name, "source": name.partition(":")[0], "kind": kind, **row}
            rows.append(row)
            print(f"{name:42s} {kind:7s} {row['status']:8s} {row.get('reason', '')[:100]}", flush=True)
    cols = ["arch", "source", "kind", "status", "inserted", "params", "identity_eval", "identity_train",
            "train_step", "round_trip", "stages", "found", "seconds", "reason"]
    with open(out / "coverage.csv", "w", newline="") as f:
        w = csv.DictWriter(f, cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out / "README.md").write_text(_markdown(rows, kinds, args, time.time() - t0))
    print((out / "README.md").read_text().split("\n## Every case")[0])


def _markdown(rows: list[dict[str, Any]], kinds: list[str], args: argparse.Namespace, seconds: float) -> str:
    import platform
    import timm
    import torchvision
    run = [r for r in rows if r["status"] != "missing"]
    ok = sum(r["status"] == "ok" for r in run)
    lines = ["# attach coverage", "",
             f"Command: `python benchmarks/attach_coverage.py --out {args.out}"
             + (" --attach-only" if args.attach_only else "") + "`", "",
             f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
             f"{platform.machine()}; {len(run)} cases in {seconds / 60:.1f} min.", "",
             "Each case: `verify_attach(build, kind)` (convattn.models.verify): inserted modules, identity at insertion "
             "with `identity=True` (eval and train mode, <= 1e-5 relative), one SGD step without the identity form "
             "moves inserted parameters, state dict round trip into a fresh attach.", "",
             f"**{ok} of {len(run)} cases work ({100 * ok / max(len(run), 1):.1f} %)** over "
             f"{len({r['arch'] for r in run})} architectures.", "",
             "| source | architectures | cases | ok | refused | failed |", "|---|---|---|---|---|---|"]
    for src in dict.fromkeys(r["source"] for r in rows):
        rs = [r for r in rows if r["source"] == src]
        lines.append(f"| {src} | {len({r['arch'] for r in rs})} | {sum(r['status'] != 'missing' for r in rs)} | "
                     f"{sum(r['status'] == 'ok' for r in rs)} | {sum(r['status'] == 'refused' for r in rs)} | "
                     f"{sum(r['status'] == 'failed' for r in rs)} |")
    lines += ["", "## Per architecture", "", "| architecture | blocks found (per stage) | " + " | ".join(kinds) + " |",
              "|---|---|" + "---|" * len(kinds)]
    for arch in dict.fromkeys(r["arch"] for r in rows):
        rs = {r["kind"]: r for r in rows if r["arch"] == arch}
        first = next(iter(rs.values()))
        found = f"{first.get('found', '')} {first.get('stages', '')}".strip()
        cells = []
        for k in kinds:
            r = rs.get(k, {})
            cells.append({"ok": f"ok ({r.get('inserted', '')})", "refused": "refused", "failed": "**failed**",
                          "missing": "n/a"}.get(r.get("status", ""), ""))
        lines.append(f"| {arch} | {found} | " + " | ".join(cells) + " |")
    notes = [r for r in rows if r["status"] in ("refused", "failed")]
    lines += ["", "## Refused or failed, with the reason", ""]
    lines += [f"* {r['arch']} / {r['kind']} ({r['status']}): {r.get('reason', '')}" for r in notes] or ["(none)"]
    lines += ["", "## Every case", "", "See `coverage.csv` (identity differences, parameters added, train step "
              "moved/total inserted tensors, seconds)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
