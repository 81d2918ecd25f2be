"""Zero-shot retrieval evaluation of a dual encoder on an annotation file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vidmask.config import DataConfig
from vidmask.data import VideoTextDataset, collate_video_text, flatten_captions, load_annotations
from vidmask.metrics import dual_softmax, retrieval_metrics, twin_accuracy
from vidmask.models.video_text import VideoTextModel

log = logging.getLogger("vidmask")


@torch.no_grad()
def encode_videos(model: VideoTextModel, dataset, device, batch_size: int = 32, num_workers: int = 0) -> torch.Tensor:
    """Unit features of every clip, all tokens visible: [num_videos, E]."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_video_text)
    feats = []
    for batch in loader:
        feats.append(model.encode_video(batch["video"].to(device)).float().cpu())  # (b, E)
    return torch.cat(feats)  # (Nv, E)


@torch.no_grad()
def encode_texts(model: VideoTextModel, texts: list[str], device, batch_size: int = 256) -> torch.Tensor:
    out = [model.encode_text(texts[s : s + batch_size]).float().cpu() for s in range(0, len(texts), batch_size)]
    return torch.cat(out)  # (Nt, E)


def twin_pairs(anno_path: Path, items) -> list[tuple[int, int, str]]:
    """Twin pairs (as indices into `items`) from the corpus.json beside the annotations, if any."""
    meta = Path(anno_path).parent / "corpus.json"
    if not meta.is_file():
        return []
    data = json.loads(meta.read_text())
    index = {Path(it.path).resolve(): i for i, it in enumerate(items)}
    pairs = []
    root = meta.parent
    for tw in data.get("twins", []):
        a, b = index.get((root / tw["a"]).resolve()), index.get((root / tw["b"]).resolve())
        if a is not None and b is not None:
            pairs.append((a, b, tw["differs"]))
    return pairs


def evaluate_retrieval(
    model: VideoTextModel,
    anno_path: str | Path,
    data_cfg: DataConfig,
    device: torch.device,
    dsl: bool = False,
    batch_size: int = 32,
) -> dict:
    """Metrics (and twin accuracies) for every caption of every video in `anno_path`.

    A bad video stops the evaluation with an error naming the file.
    """
    anno_path = Path(anno_path)
    items = load_annotations(anno_path, root=data_cfg.root())
    model.eval()
    ds = VideoTextDataset(items, data_cfg.num_frames, data_cfg.size, train=False)
    vfeat = encode_videos(model, ds, device, batch_size, num_workers=min(data_cfg.num_workers, 2))  # (Nv, E)
    texts, t2v = flatten_captions(items)
    tfeat = encode_texts(model, texts, device)  # (Nt, E)
    sim = tfeat @ vfeat.T  # (Nt, Nv)
    t2v_t = torch.tensor(t2v, dtype=torch.long)
    result = {
        "anno": str(anno_path),
        "num_videos": len(items),
        "num_texts": len(texts),
        **retrieval_metrics(sim, t2v_t),
        "chance_R@1": 100.0 / len(items),
    }
    pairs = twin_pairs(anno_path, items)
    if pairs:
        result["twins"] = twin_accuracy(sim, t2v_t, pairs)
    if dsl:
        result["dsl"] = retrieval_metrics(dual_softmax(sim), t2v_t)
    return result


def format_table(result: dict) -> str:
    """A plain-text table of one evaluation, with chance level beside it."""
    lines = [f"retrieval on {result['anno']}: {result['num_videos']} videos, {result['num_texts']} text queries"]
    head = f"{'':6s} {'R@1':>7s} {'R@5':>7s} {'R@10':>7s} {'MdR':>7s} {'MnR':>8s}"
    lines.append(head)
    for side in ("t2v", "v2t"):
        m = result[side]
        lines.append(f"{side:6s} {m['R@1']:7.2f} {m['R@5']:7.2f} {m['R@10']:7.2f} {m['MdR']:7.1f} {m['MnR']:8.2f}")
    lines.append(f"Rsum {result['rsum']:.2f}; chance R@1 = {result['chance_R@1']:.3f} "
                 f"(t2v R@1 is {result['t2v']['R@1'] / result['chance_R@1']:.1f}x chance)")
    if "dsl" in result:
        d = result["dsl"]
        lines.append(f"with DSL: t2v R@1 {d['t2v']['R@1']:.2f}, v2t R@1 {d['v2t']['R@1']:.2f}, Rsum {d['rsum']:.2f}")
    for kind in ("motion", "colour"):
        if kind in result.get("twins", {}):
            lines.append(f"twin accuracy ({kind}): {result['twins'][kind]:.1f} % over "
                         f"{int(result['twins'][kind + '_n'])} captions (chance 50 %)")
    return "\n".join(lines)
