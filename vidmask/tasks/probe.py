"""The temporal probe: linear probes of each object's motion, colour and shape from frozen video features.

On the motion-shapes corpus every clip's ground truth is in ``corpus.json``.
The probe takes the single-object clips of the train and test splits,
encodes them with a run's frozen video encoder (all tokens, middle frames),
and fits a linear probe (`vidmask.metrics.probe`) per attribute on two
features: the joint-space video feature retrieval uses, and the mean of the
encoder's output tokens. Motion is the temporal attribute; colour and shape
are the appearance controls a single frame already shows. Chance is one over
the number of classes (the classes are near balanced by construction).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vidmask.config import Config
from vidmask.data import VideoText, eval_loader
from vidmask.data.annotations import AnnotationError
from vidmask.metrics.probe import probe_accuracy
from vidmask.tasks.retrieval import twin_lines

ATTRIBUTES = ("motion", "colour", "shape")
FEATURES = ("joint", "mean_token")


def probe_items(corpus: Path, max_train: int = 0) -> dict[str, list[tuple[VideoText, dict]]]:
    """Single-object clips by split ("train", "test") with their object's ground truth; ``max_train``
    (> 0) keeps an even sample of that many training clips."""
    meta = Path(corpus) / "corpus.json"
    if not meta.is_file():
        raise AnnotationError(f"{meta}: not found; the probe needs the motion-shapes corpus's ground truth "
                              "(make one with `vidmask corpus make`, or pass --corpus)")
    data = json.loads(meta.read_text())
    out: dict[str, list] = {"train": [], "test": []}
    for v in data["videos"]:
        if v["split"] in out and len(v["objects"]) == 1:
            out[v["split"]].append((VideoText(path=Path(corpus) / v["video"], captions=v["captions"][:1]),
                                    v["objects"][0]))
    if not out["train"] or not out["test"]:
        raise AnnotationError(f"{meta}: the probe needs single-object clips in both the train and test splits")
    if max_train and len(out["train"]) > max_train:
        step = len(out["train"]) / max_train
        out["train"] = [out["train"][int(i * step)] for i in range(max_train)]
    return out


@torch.no_grad()
def encode_features(model, items: list[VideoText], cfg: Config, device) -> dict[str, torch.Tensor]:
    """{"joint": float[n,E], "mean_token": float[n,C]} of the clips, all tokens, middle frames."""
    model.eval()
    joint, mean = [], []
    for batch in eval_loader(items, cfg.data.num_frames, cfg.data.size, cfg.data.num_workers, device=device):
        tokens = model.video_tokens(batch["video"])  # (b, K, C)
        joint.append(model.project_video(tokens).float().cpu())  # (b, E)
        mean.append(tokens.mean(1).float().cpu())  # (b, C)
    return {"joint": torch.cat(joint), "mean_token": torch.cat(mean)}


def evaluate_probe(model, corpus: Path, cfg: Config, device, max_train: int = 0) -> dict:
    """Held-out linear-probe accuracy (%) per feature and attribute, with chance and the clip counts."""
    split = probe_items(corpus, max_train)
    feats = {s: encode_features(model, [it for it, _ in split[s]], cfg, device) for s in split}
    res: dict = {"train_clips": len(split["train"]), "test_clips": len(split["test"]), "chance": {}}
    for attr in ATTRIBUTES:
        names = sorted({o[attr] for s in split for _, o in split[s]})
        index = {n: i for i, n in enumerate(names)}
        ys = {s: torch.tensor([index[o[attr]] for _, o in split[s]]) for s in split}
        res["chance"][attr] = 100.0 / len(names)
        for f in FEATURES:
            acc = probe_accuracy(feats["train"][f], ys["train"], feats["test"][f], ys["test"], len(names))
            res.setdefault(f, {})[attr] = acc
    return res


def probe_table(res: dict) -> str:
    lines = [f"linear probes on {res['test_clips']} single-object test clips (fitted on {res['train_clips']}):",
             f"{'feature':12s}" + "".join(f"{a:>16s}" for a in ATTRIBUTES)]
    for f in FEATURES:
        lines.append(f"{f:12s}" + "".join(f"{res[f][a]:15.1f}%" for a in ATTRIBUTES))
    lines.append(f"{'chance':12s}" + "".join(f"{res['chance'][a]:15.1f}%" for a in ATTRIBUTES))
    lines += twin_lines(res.get("twins", {}))
    return "\n".join(lines)
