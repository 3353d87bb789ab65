"""The model card of a shared folder (its ``README.md``): base network and licence, what was attached and where,
added parameters and MACs, the run's recipe and accuracy when saved from a run folder, the reconstruction note for
AW-convolution and STEAM, and the papers' BibTeX.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .models.hub import RECIPE_KEYS

__all__ = ["model_card", "read_run", "plain_of", "base_licence", "CITATIONS"]

#: licences of the bases' code, where the base's own config does not say
_LICENCES = {"convattn": "apache-2.0", "torchvision": "bsd-3-clause"}

#: BibTeX of each module's paper (keyed by convattn's module names). Pages checked in Dec 2026: SE against the
#: CVPR paper's printed pages, coordinate attention against the CVF page, CBAM against ECVA's, GCT against its
#: authors' README, ECA against published citations of the CVPR paper, AW-convolution against the Springer chapter
#: (LNCS 12891). STEAM is an arXiv preprint (v1 2024, v2 2026).
CITATIONS = {
    "se": "@inproceedings{hu2018squeeze,\n  title={Squeeze-and-Excitation Networks},\n  author={Hu, Jie and Shen, Li "
          "and Sun, Gang},\n  booktitle={Proceedings of the IEEE Conference on Computer Vision and Pattern "
          "Recognition (CVPR)},\n  pages={7132--7141},\n  year={2018}\n}",
    "cbam": "@inproceedings{woo2018cbam,\n  title={{CBAM}: Convolutional Block Attention Module},\n  author={Woo, "
            "Sanghyun and Park, Jongchan and Lee, Joon-Young and Kweon, In So},\n  booktitle={Proceedings of the "
            "European Conference on Computer Vision (ECCV)},\n  pages={3--19},\n  year={2018}\n}",
    "eca": "@inproceedings{wang2020eca,\n  title={{ECA-Net}: Efficient Channel Attention for Deep Convolutional Neural "
           "Networks},\n  author={Wang, Qilong and Wu, Banggu and Zhu, Pengfei and Li, Peihua and Zuo, Wangmeng and "
           "Hu, Qinghua},\n  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern "
           "Recognition (CVPR)},\n  pages={11534--11542},\n  year={2020}\n}",
    "gct": "@inproceedings{yang2020gated,\n  title={Gated Channel Transformation for Visual Recognition},\n  "
           "author={Yang, Zongxin and Zhu, Linchao and Wu, Yu and Yang, Yi},\n  booktitle={Proceedings of the "
           "IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},\n  pages={11794--11803},\n  "
           "year={2020}\n}",
    "coord": "@inproceedings{hou2021coordinate,\n  title={Coordinate Attention for Efficient Mobile Network Design},\n"
             "  author={Hou, Qibin and Zhou, Daquan and Feng, Jiashi},\n  booktitle={Proceedings of the IEEE/CVF "
             "Conference on Computer Vision and Pattern Recognition (CVPR)},\n  pages={13713--13722},\n  "
             "year={2021}\n}",
    "steam": "@article{sabharwal2024steam,\n  title={{STEAM}: Squeeze and Transform Enhanced Attention Module},\n  "
             "author={Sabharwal, Rishabh and Ram Samarth B B and Rathore, Parikshit Singh and Rathore, Punit},\n  "
             "journal={arXiv preprint arXiv:2412.09023},\n  year={2024}\n}",
    "aw": "@inproceedings{zhu2021attention,\n  title={An Attention Module for Convolutional Neural Networks},\n  "
          "author={Zhu, Baozhou and Hofstee, Peter and Lee, Jinho and Al-Ars, Zaid},\n  booktitle={Artificial Neural "
          "Networks and Machine Learning -- ICANN 2021},\n  series={Lecture Notes in Computer Science},\n  "
          "volume={12891},\n  pages={167--178},\n  year={2021},\n  doi={10.1007/978-3-030-86362-3_14},\n  "
          "note={arXiv:2108.08205}\n}",
}
CITATIONS["ceca"] = CITATIONS["eca"]

_RECONSTRUCTION = ("**Reconstruction.** {names} {verb} convattn's reconstruction{s} of the published design{s}: "
                   "the authors' code is not public, and every choice the text leaves open is a named option "
                   "(convattn's docs/reconstruction.md). Results of this network are results of the "
                   "reconstruction{s}, not the papers' numbers.")

# run settings shown in the card's recipe (the run's config.json holds all of them)
_RECIPE_FIELDS = ("model", "variant", "data", "train_size", "image_size", "epochs", "batch_size", "lr", "schedule",
                  "warmup_epochs", "momentum", "nesterov", "weight_decay", "label_smoothing", "mixup", "cutmix",
                  "ema", "amp", "identity", "pretrained_path", "freeze_epochs", "seed", "preset")


def base_licence(base: str, cfg: Mapping[str, Any] | None) -> str | None:
    lib = base.partition(":")[0] if ":" in base else "convattn"
    if isinstance(cfg, Mapping) and cfg.get("license"):
        return str(cfg["license"])
    return _LICENCES.get(lib)


def plain_of(recipe: dict[str, Any], config: Mapping[str, Any]) -> nn.Module | None:
    """The plain base network (for the added parameters and MACs); None if it cannot be built."""
    from .models.timm_models import build_base
    current = {k: v for k, v in config.get("model_args", {}).items() if k not in RECIPE_KEYS}
    try:
        return build_base(recipe["base"], recipe["base_args"], None, "card", **current)
    except (ValueError, TypeError, RuntimeError):
        return None


def _attached_rows(model: nn.Module) -> list[dict[str, Any]]:
    """One row per attached module: where it sits, its class, its parameters."""
    from .layers import AWConv2d
    from .models.attach import AttnThen, ResidualScale, ThenAttn
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, (ThenAttn, AttnThen)):
            attn = m.attn
            inner = attn.module if isinstance(attn, ResidualScale) else attn
            rows.append(dict(where=f"{name}.attn", side="after" if isinstance(m, ThenAttn) else "before",
                             module=type(inner).__name__ + (" (identity start)" if inner is not attn else ""),
                             params=sum(p.numel() for p in attn.parameters())))
        elif isinstance(m, AWConv2d):
            own = {id(m.weight)} | ({id(m.bias)} if m.bias is not None else set())
            rows.append(dict(where=name, side="replaces", module="AWConv2d",
                             params=sum(p.numel() for p in m.parameters() if id(p) not in own)))
    return rows


def _modules_table(rows: list[dict[str, Any]]) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["module"], r["side"]), []).append(r)
    lines = ["| module | count | sits | parameters | where |", "|---|---|---|---|---|"]
    for (module, side), rs in groups.items():
        names = [r["where"] for r in rs]
        shown = ", ".join(f"`{n}`" for n in names) if len(names) <= 4 else \
            f"`{names[0]}`, `{names[1]}`, …, `{names[-1]}`"
        sits = {"after": "at the output of the layer it is attached to", "before": "in front of the convolution",
                "replaces": "replaces the convolution (same weights)"}[side]
        lines.append(f"| {module} | {len(rs)} | {sits} | {sum(r['params'] for r in rs):,} | {shown} |")
    return "\n".join(lines)


def _complexity(model: nn.Module, plain: nn.Module | None, in_chans: int, size: int) -> dict[str, Any]:
    from .profile import count_complexity, count_params
    out: dict[str, Any] = {"params": count_params(model)}
    x = torch.randn(1, in_chans, size, size)
    dev = next((t.device for t in model.parameters()), torch.device("cpu"))
    try:
        out["macs"] = count_complexity(model, x.to(dev)).macs
        if plain is not None:
            out["plain_params"] = count_params(plain)
            out["plain_macs"] = count_complexity(plain.to(dev), x.to(dev)).macs
    except Exception:  # noqa: BLE001 - a network the counter cannot follow: the card gives parameters only
        pass
    return out


def model_card(model: nn.Module, recipe: Mapping[str, Any], config: Mapping[str, Any], *,
               plain: nn.Module | None = None, size: int = 224, in_chans: int = 3,
               run: Mapping[str, Any] | None = None, card: Mapping[str, Any] | None = None) -> str:
    """The README.md of a shared folder (timm's card layout, ``timm.models.generate_readme``), see the module
    docstring for what it says."""
    from .models.plan import AttachPlan
    card = dict(card or {})
    base = recipe["base"]
    pcfg = config.get("pretrained_cfg", {})
    licence = pcfg.get("license") or base_licence(base, None)
    plans = [AttachPlan.from_dict(d) for d in recipe["attach"]]
    kinds = list(dict.fromkeys(k for p in plans for k in p.modules))
    cost = _complexity(model, plain, in_chans, size)
    base_text = f"`{base}`" + (f" with `{json.dumps(recipe['base_args'])}`" if recipe["base_args"] else "")
    details: dict[str, Any] = {
        "Model Type": "Image classification / feature backbone",
        "Base network": f"{base_text} (licence: {licence or 'not recorded: check the base network'})",
        "Attached": [f"`{p.name}`" + (" (identity start)" if p.identity else "")
                     + (f", where `{json.dumps(p.to_dict()['where'])}`" if p.where is not None else "")
                     + (f", options `{json.dumps(dict(p.attn_kwargs))}`" if p.attn_kwargs else "")
                     + (f", conv options `{json.dumps(dict(p.conv_kwargs))}`" if p.conv_kwargs else "")
                     for p in plans] or ["nothing (the plain network)"],
        "Params (M)": f"{cost['params'] / 1e6:.3f}",
        "Image size": "x".join(map(str, pcfg.get("input_size", (in_chans, size, size)))),
    }
    if "plain_params" in cost:
        added = cost["params"] - cost["plain_params"]
        details["Added params"] = f"{added:,} ({100 * added / max(cost['plain_params'], 1):.2f} % of the plain network)"
    if "macs" in cost:
        details[f"GMACs at {size}x{size}"] = f"{cost['macs'] / 1e9:.4f}"
        if "plain_macs" in cost:
            details["Added MACs"] = (f"{(cost['macs'] - cost['plain_macs']) / 1e6:,.3f} M "
                                     f"({100 * (cost['macs'] - cost['plain_macs']) / max(cost['plain_macs'], 1):.2f} %; "
                                     "dispatch-level count, convattn.profile)")
    if run is not None:
        details["Dataset"] = run["data"]
    sections = [card.get("description") or
                f"A {base} network with convattn attention ({', '.join(kinds) or 'none'}), shared as a timm model."]
    sections.append("## Modules and where they sit\n\n" + (_modules_table(_attached_rows(model))
                                                           if plans else "No module is attached."))
    recon = [n for n, k in (("AW-convolution", "aw"), ("STEAM", "steam")) if k in kinds]
    if recon:
        sections.append(_RECONSTRUCTION.format(names=" and ".join(recon), verb="are" if len(recon) > 1 else "is",
                                               s="s" if len(recon) > 1 else ""))
    if run is not None:
        sections.append(_run_section(run))
    usage = ("```python\nimport timm\nimport convattn  # registers convattn_attached, which rebuilds this network\n\n"
             "model = timm.create_model(\"hf-hub:<user>/<repo>\", pretrained=True)   # or \"local-dir:<folder>\"\n"
             "model.eval()\ncfg = timm.data.resolve_data_config(model=model)\n"
             "transform = timm.data.create_transform(**cfg)\n```\n"
             "`pretrained=True` loads the weights (without it timm builds the network with fresh weights). "
             "Fine-tuning with convattn: `convattn train ... --pretrained-path <folder>`.\n")
    cites = [CITATIONS[k] for k in kinds if k in CITATIONS]
    name = card.get("name") or f"{base} + {'+'.join(p.name for p in plans) or 'none'}"
    tags = list(card.get("tags") or ["image-classification", "timm", "convattn"])
    out = ["---", "tags:", *[f"- {t}" for t in tags], "library_name: timm",
           f"license: {card.get('license') or licence or 'unknown'}", "pipeline_tag: image-classification", "---",
           f"# Model card for {name}", "", "\n\n".join(sections), "", "## Model details", ""]
    for k, v in details.items():
        if isinstance(v, list):
            out += [f"- **{k}:**", *[f"  - {x}" for x in v]]
        else:
            out.append(f"- **{k}:** {v}")
    out += ["", "## Usage", "", usage]
    if cites:
        out += ["## Citation", "", *[f"```bibtex\n{c}\n```" for c in cites]]
    return "\n".join(out) + "\n"


# --- runs ---

def read_run(run: str | os.PathLike) -> dict[str, Any]:
    """What the card takes from a run folder: settings, data, final accuracy."""
    run = Path(run)
    try:
        settings = json.loads((run / "config.json").read_text())
        data = json.loads((run / "data.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{run} is not a run folder of convattn train (config.json and data.json: "
                         f"{type(e).__name__}: {e})") from None
    final = {}
    if (run / "final.json").is_file():
        try:
            final = json.loads((run / "final.json").read_text())
        except ValueError:
            final = {}
    size = int(data.get("image_size") or 224)
    data_config = dict(input_size=(int(data.get("in_chans") or 3), size, size), mean=tuple(data["mean"]),
                       std=tuple(data["std"]), crop_pct=1.0, interpolation="bilinear")
    return dict(path=str(run), settings=settings, data=data.get("name") or settings.get("data"), final=final,
                classes=data.get("classes"), data_config=data_config, ema=False)


def _run_section(run: Mapping[str, Any]) -> str:
    s, f = run["settings"], run["final"]
    rows = [f"| {k} | `{json.dumps(s[k])}` |" for k in _RECIPE_FIELDS if k in s and s[k] not in (None, "", [], {})]
    lines = ["## Training run", "", f"Trained with `convattn train` (run folder `{Path(run['path']).name}`); its "
             "`config.json` holds every setting.", "", "| setting | value |", "|---|---|", *rows, ""]
    if f:
        key = "ema_top1" if run.get("ema") else "val_top1"
        acc = f.get(key)
        if acc is not None:
            lines.append(f"Validation top-1 of these weights ({'EMA' if run.get('ema') else 'final epoch'}): "
                         f"**{float(acc):.2f} %** on {f.get('val_images', '?')} images of {run['data']} "
                         f"(epoch {f.get('epochs', '?')}; top-5 {float(f.get('val_top5', float('nan'))):.2f} %).")
    else:
        lines.append("The run has no final.json (it did not finish): no accuracy is given.")
    return "\n".join(lines)
