"""Text-video retrieval evaluation of a dual encoder on an annotation file (R@k, MdR, MnR, twins, DSL, re-ranking)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from vidmask.config import Config
from vidmask.data import eval_loader, flatten_captions, load_annotations
from vidmask.data.shard import gather_ordered, my_share
from vidmask.metrics import dual_softmax, retrieval_metrics, twin_accuracy
from vidmask.models.video_text import VideoTextModel
from vidmask.objectives.clauses import clause_similarity, split_clauses
from vidmask.tasks.rerank import rerank

log = logging.getLogger("vidmask")


def config_loader(items, cfg: Config, device):
    """The evaluation loader of a run's config: its frames, size and (at most 2) workers; batches on
    ``device``, their video normalised there."""
    return eval_loader(items, cfg.data.num_frames, cfg.data.size, cfg.data.num_workers, device=device)


@torch.no_grad()
def encode_texts(model: VideoTextModel, texts: list[str], device, batch_size: int = 256) -> torch.Tensor:
    out = [model.encode_text(texts[s : s + batch_size]).float().cpu() for s in range(0, len(texts), batch_size)]
    return torch.cat(out)  # (Nt, E)


def twin_pairs(anno_path: Path, items) -> list[tuple[int, int, str]]:
    """Twin pairs (as indices into `items`) from the corpus.json beside the annotations, if any.

    Each twin is listed as ``(a, b, kind)`` ("motion" or "colour") and, where the corpus records its
    scene, again as ``(a, b, f"{kind}_{n}obj")`` with n its number of objects, so that twin_accuracy
    also reports each kind by scene size (a motion among three objects is the hard case), and as
    ``(a, b, f"{kind}:{x}/{y}")`` with x, y the changed object's two values in alphabetical order
    ("motion:enter/leave"), so that it reports which pairs of motions or colours are told apart."""
    meta = Path(anno_path).parent / "corpus.json"
    if not meta.is_file():
        return []
    data = json.loads(meta.read_text())
    index = {Path(it.path).resolve(): i for i, it in enumerate(items)}
    pairs = []
    root = meta.parent
    objects = {v["video"]: v["objects"] for v in data.get("videos", []) if "objects" in v}
    for tw in data.get("twins", []):
        a, b = index.get((root / tw["a"]).resolve()), index.get((root / tw["b"]).resolve())
        if a is not None and b is not None:
            kind = tw["differs"]
            pairs.append((a, b, kind))
            if tw["a"] in objects and tw["b"] in objects:
                pairs.append((a, b, f"{kind}_{len(objects[tw['a']])}obj"))
                o = tw.get("object")
                if o is not None and o < len(objects[tw["a"]]) and o < len(objects[tw["b"]]):
                    values = sorted(str(objects[tw[s]][o].get(kind)) for s in "ab")
                    pairs.append((a, b, f"{kind}:{values[0]}/{values[1]}"))
    return pairs


@torch.no_grad()
def evaluate_retrieval(model: VideoTextModel, anno: str | Path, cfg: Config, device, reranker=None,
                       items=None) -> dict:
    """Retrieval on every caption of every video in `anno` (or one paragraph per video).

    Dual-encoder scores; with a ``reranker`` ``(text_states [Nt,S,W], text_mask [Nt,S],
    video_tokens [Nv,K,C]) -> ScoreFn`` (a task's :meth:`reranker`, e.g. the matching head of
    `vtm`), also each query's top-k re-ranked by it; DSL when cfg.finetune.dsl. A bad video
    stops the evaluation with an error naming the file.
    """
    anno = Path(anno)
    items = items if items is not None else load_annotations(anno, root=cfg.data.root(), unique=True, nonempty=True)
    model.eval()
    toks, feats, units = [], [], []
    keep_tokens = reranker is not None and cfg.finetune.rerank_k > 0
    by_clauses = cfg.finetune.similarity == "clauses"
    share = my_share(len(items))  # under torchrun each rank encodes its share of the videos
    for batch in config_loader([items[i] for i in share], cfg, device):
        f = model.video_tokens(batch["video"])  # (b, K, C)
        feats += list(model.project_video(f).cpu())  # b x (E,)
        if keep_tokens:
            toks += list(f.cpu())  # b x (K, C)
        if by_clauses:  # each token in the joint space, as loss.clauses scores them
            units += list(F.normalize(model.vision_proj(f).float(), dim=-1).cpu())  # b x (K, E)
    vfeat = torch.stack(gather_ordered(feats, len(items)))  # (Nv, E)
    if cfg.finetune.paragraph:
        texts, t2v = [" ".join(it.captions) for it in items], list(range(len(items)))
    else:
        texts, t2v = flatten_captions(items)
    if by_clauses:
        pieces = [split_clauses(t) for t in texts]
        owner = torch.tensor([i for i, p in enumerate(pieces) for _ in p])  # (M,)
        clauses = encode_texts(model, [c for p in pieces for c in p], device)  # (M, E) unit
        sim = clause_similarity(clauses, owner, torch.stack(gather_ordered(units, len(items))), len(texts))
    else:
        tfeat = encode_texts(model, texts, device)  # (Nt, E)
        sim = tfeat @ vfeat.T  # (Nt, Nv)
    t2v_t = torch.tensor(t2v)
    res = score_report(sim, t2v_t, anno, items, len(texts), cfg)
    if by_clauses:
        res["similarity"] = "clauses"
    if keep_tokens:
        vtok = torch.stack(gather_ordered(toks, len(items))).to(device)  # (Nv, K, C)
        enc = model.text.tokenize(texts, device)  # one padding for all queries
        states = torch.cat([model.text.token_states(None, enc["input_ids"][s:s + 256],
                                                    enc["attention_mask"][s:s + 256])[0]
                            for s in range(0, len(texts), 256)])  # (Nt, S, W)
        score = reranker(states, enc["attention_mask"], vtok)
        k = min(cfg.finetune.rerank_k, len(items))
        t2v_sim = rerank(sim, score, k=k)  # (Nt, Nv)
        v2t_sim = rerank(sim.T, lambda v_idx, t_idx: score(t_idx, v_idx), k=min(k, len(texts)))  # (Nv, Nt)
        a, b = retrieval_metrics(t2v_sim, t2v_t), retrieval_metrics(v2t_sim.T, t2v_t)
        res["reranked"] = {"k": k, "t2v": a["t2v"], "v2t": b["v2t"],
                           "rsum": sum(d[m] for d in (a["t2v"], b["v2t"]) for m in ("R@1", "R@5", "R@10"))}
    return res


def score_report(sim, t2v, anno: Path, items, num_texts: int, cfg: Config) -> dict:
    """The retrieval report of scores sim [Nt,Nv] (t2v long[Nt]: each text's video): R@k, MdR, MnR,
    chance, twin accuracy when the corpus has twins, and DSL when cfg.finetune.dsl."""
    res = {"anno": str(anno), "num_videos": len(items), "num_texts": num_texts, **retrieval_metrics(sim, t2v),
           "chance_R@1": 100.0 / len(items)}
    pairs = twin_pairs(anno, items)
    if pairs:
        res["twins"] = twin_accuracy(sim, t2v, pairs)
    if cfg.finetune.dsl:
        res["dsl"] = retrieval_metrics(dual_softmax(sim), t2v)
    return res


def twin_lines(twins: dict) -> list[str]:
    """The twin accuracies of a report (:func:`twin_pairs`' kinds), each with its breakdown by scene size."""
    lines = []
    for kind in ("motion", "colour"):
        if kind not in twins:
            continue
        lines.append(f"twin accuracy ({kind}): {twins[kind]:.1f} % over {int(twins[kind + '_n'])} captions "
                     f"(chance 50 %)")
        sizes = sorted(int(m[1]) for k in twins if (m := re.fullmatch(rf"{kind}_(\d+)obj", k)))
        if sizes:
            lines.append("  by objects in the scene: " + ", ".join(
                f"{n}: {twins[f'{kind}_{n}obj']:.1f} % of {int(twins[f'{kind}_{n}obj_n'])}" for n in sizes))
        hardest = hardest_pairs(twins, kind)
        if hardest:
            lines.append("  hardest pairs: " + ", ".join(
                f"{k.split(':', 1)[1]} {twins[k]:.1f} % of {int(twins[k + '_n'])}" for k in hardest))
    return lines


def hardest_pairs(twins: dict, kind: str, count: int = 3, least: int = 10) -> list[str]:
    """The ``count`` pairs of values (``kind:x/y`` keys) of lowest twin accuracy among those scored on at
    least ``least`` captions (all of them when none is), lowest first."""
    keys = [k for k in twins if k.startswith(kind + ":") and not k.endswith("_n")]
    enough = [k for k in keys if twins[k + "_n"] >= least] or keys
    return sorted(enough, key=lambda k: (twins[k], k))[:count]


def format_table(result: dict) -> str:
    """A plain-text table of one evaluation, with chance level beside it."""
    scored = f", scored by {result['similarity']}" if "similarity" in result else ""
    lines = [f"retrieval on {result['anno']}: {result['num_videos']} videos, {result['num_texts']} text queries"
             f"{scored}"]
    head = f"{'':6s} {'R@1':>7s} {'R@5':>7s} {'R@10':>7s} {'MdR':>7s} {'MnR':>8s}"
    lines.append(head)
    for side in ("t2v", "v2t"):
        m = result[side]
        lines.append(f"{side:6s} {m['R@1']:7.2f} {m['R@5']:7.2f} {m['R@10']:7.2f} {m['MdR']:7.1f} {m['MnR']:8.2f}")
    lines.append(f"Rsum {result['rsum']:.2f}; chance R@1 = {result['chance_R@1']:.3f} "
                 f"(t2v R@1 is {result['t2v']['R@1'] / result['chance_R@1']:.1f}x chance)")
    if "reranked" in result:
        rr = result["reranked"]
        lines.append(f"re-ranked top-{rr['k']} with the matching head: t2v R@1 {rr['t2v']['R@1']:.2f}, "
                     f"R@5 {rr['t2v']['R@5']:.2f}, v2t R@1 {rr['v2t']['R@1']:.2f}, Rsum {rr['rsum']:.2f}")
    if "dsl" in result:
        d = result["dsl"]
        lines.append(f"with DSL: t2v R@1 {d['t2v']['R@1']:.2f}, v2t R@1 {d['v2t']['R@1']:.2f}, Rsum {d['rsum']:.2f}")
    lines += twin_lines(result.get("twins", {}))
    return "\n".join(lines)
