"""MASCOT against explicit references: interaction masks, masked attention, GRL, WTI, loss routing."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vidmask.config import ConfigError, load_config
from vidmask.models.blocks import Attention, Block
from vidmask.models.grl import grad_reverse
from vidmask.models.interaction import spatial_interaction, temporal_interaction
from vidmask.models.wti import TokenSet, wti_similarity, wti_similarity_chunked
from vidmask.tasks.mascot import MascotTask

# ------------------------------------------------------------------ eq. 3 and 4, element by element


def test_spatial_interaction_is_eq3():
    keep = torch.tensor([[True, False, True, False, False]])  # (1, N): p1 p3 visible, p2 p4 p5 masked
    got = spatial_interaction(keep, prefix=1)[0]  # (1+N, 1+N), token 0 = CLS
    masked = [False] + [not k for k in keep[0].tolist()]  # the CLS is never masked
    for i in range(6):
        for j in range(6):
            want = not (masked[j] and i != j)  # U_s(i, j) = 0 iff p_j is masked and i != j
            assert bool(got[i, j]) == want, (i, j)
    # visible tokens (and the CLS) read visible ones only; masked ones read the visible ones and themselves
    assert got[0].tolist() == [True, True, False, True, False, False]  # the CLS
    assert got[1].tolist() == [True, True, False, True, False, False]  # p1, visible
    assert got[2].tolist() == [True, True, True, True, False, False]  # p2, masked: itself too


def test_temporal_interaction_is_eq4():
    frame_masked = torch.tensor([[False, True, True, False]])  # (1, T): v0 v3 unmasked, v1 v2 masked
    got = temporal_interaction(frame_masked)[0]  # (T, T)
    m = frame_masked[0].tolist()
    for i in range(4):
        for j in range(4):
            assert bool(got[i, j]) == (not (not m[i] and m[j])), (i, j)  # 0 iff v_i unmasked, v_j masked
    assert got[1].all() and got[2].all()  # masked frames attend to everything, each other included


def _loop_attention(attn: Attention, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Reference: every query on its own, softmax over the keys it may see, head by head."""
    B, M, C = x.shape
    h, d = attn.heads, C // attn.heads
    q = attn.q(x)  # (B, M, C)
    k, v = attn.kv(x).split(C, -1)  # (B, M, C) each
    out = torch.zeros(B, M, C)
    for b in range(B):
        for i in range(M):
            for hh in range(h):
                sl = slice(hh * d, (hh + 1) * d)
                keys = [j for j in range(M) if allowed[b, i, j]]
                logits = torch.stack([q[b, i, sl] @ k[b, j, sl] / math.sqrt(d) for j in keys])
                w = logits.softmax(0)
                out[b, i, sl] = sum(wj * v[b, j, sl] for wj, j in zip(w, keys))
    return attn.proj(out)  # (B, M, C)


@pytest.mark.parametrize("which", ["spatial", "temporal"])
def test_attention_with_each_mask_equals_a_loop_over_queries(which):
    torch.manual_seed(0)
    attn = Attention(8, 2)
    if which == "spatial":
        keep = torch.tensor([[True, False, True, False, True], [False, False, True, True, True]])  # (B, N)
        allowed = spatial_interaction(keep)  # (B, 6, 6)
    else:
        allowed = temporal_interaction(torch.tensor([[False, True, True, False, True, False],
                                                     [True, False, False, False, True, True]]))  # (B, 6, 6)
    x = torch.randn(2, 6, 8)
    got = attn(x, attn_mask=allowed.unsqueeze(1))  # (B, M, C)
    torch.testing.assert_close(got, _loop_attention(attn, x, allowed), atol=1e-5, rtol=1e-5)
    # and the attention map (eq. 1, what the masks are ranked by) is the same softmax
    w = attn.weights(x, allowed.unsqueeze(1))  # (B, M, M)
    assert torch.all(w[~allowed] == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 6))


def test_block_attention_map_matches_its_attention():
    torch.manual_seed(1)
    blk = Block(8, 2)
    x = torch.randn(3, 5, 8)
    w = blk.attention_map(x)  # (B, M, M), head-averaged
    xn = blk.norm1(x)
    C, h = 8, 2
    q = blk.attn.q(xn).view(3, 5, h, 4).transpose(1, 2)
    k = blk.attn.kv(xn)[..., :C].view(3, 5, h, 4).transpose(1, 2)
    ref = ((q @ k.transpose(-1, -2)) / 2.0).softmax(-1).mean(1)
    torch.testing.assert_close(w, ref)


# ------------------------------------------------------------------ the gradient reversal layer


def test_grl_passes_values_and_reverses_gradients():
    x = torch.randn(4, 3, requires_grad=True)
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)
    g = torch.randn(4, 3)
    y.backward(g)
    torch.testing.assert_close(x.grad, -0.7 * g)
    with pytest.raises(ValueError):
        grad_reverse(x, -1.0)


# ------------------------------------------------------------------ WTI against a double loop


def _wti_loop(text: TokenSet, video: TokenSet) -> torch.Tensor:
    A, V = len(text), len(video)
    out = torch.zeros(A, V)
    for a in range(A):
        s_idx = [s for s in range(text.tokens.shape[1]) if text.valid[a, s]]
        tw = torch.softmax(text.weights[a, s_idx], 0)
        for v in range(V):
            t_idx = [t for t in range(video.tokens.shape[1]) if video.valid[v, t]]
            vw = torch.softmax(video.weights[v, t_idx], 0)
            cos = [[float(text.tokens[a, s] @ video.tokens[v, t]) for t in t_idx] for s in s_idx]
            t2v = sum(w * max(row) for w, row in zip(tw, cos))
            v2t = sum(w * max(cos[si][ti] for si in range(len(s_idx))) for ti, w in enumerate(vw))
            out[a, v] = 0.5 * (t2v + v2t)
    return out


def _random_set(n, m, e, g, pad_from=None):
    tok = torch.nn.functional.normalize(torch.randn(n, m, e, generator=g), dim=-1)
    valid = torch.ones(n, m, dtype=torch.bool)
    if pad_from is not None:
        for i, k in enumerate(pad_from):
            valid[i, k:] = False
    return TokenSet(tok, torch.randn(n, m, generator=g), valid)


def test_wti_equals_a_double_loop_over_tokens():
    g = torch.Generator().manual_seed(0)
    text = _random_set(3, 6, 5, g, pad_from=[6, 2, 4])  # padded captions
    video = _random_set(4, 3, 5, g, pad_from=[3, 3, 1, 2])
    got = wti_similarity(text, video)  # (A, V)
    torch.testing.assert_close(got, _wti_loop(text, video), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(wti_similarity_chunked(text, video, max_elements=20), got)
    # padding never counts: changing a padded token changes nothing
    text.tokens[1, 3] = -text.tokens[1, 3]
    torch.testing.assert_close(wti_similarity(text, video), got)


# ------------------------------------------------------------------ the co-learning step


def _task(**over):
    overrides = ["finetune.task=retrieval", "finetune.method=mascot", "model.text.init=random", "model.dim=32",
                 "model.depth=2", "model.heads=2", "model.embed_dim=16", "data.size=32", "data.num_frames=4",
                 "finetune.mascot.temporal_heads=2", "finetune.mascot.disc_hidden=8"]
    overrides += [f"{k}={v}" for k, v in over.items()]
    cfg = load_config(None, overrides)
    from vidmask.train.wiring import build_model

    torch.manual_seed(0)
    return MascotTask(build_model(cfg), cfg.finetune.mascot, cfg.data.num_frames, cfg.model.text.max_len), cfg


def _batch(B=4, T=4, size=32):
    g = torch.Generator().manual_seed(3)
    return {"video": torch.randn(B, T, 3, size, size, generator=g),
            "caption": ["a red square moves left", "a blue box goes up", "green circle right", "yellow down"][:B]}


GROUPS = {
    "encoder": "model.visual.", "cls": "heads.cls", "temporal": "heads.temporal.",
    "reconstructor": "heads.reconstructor.", "discriminator": "heads.discriminator.",
    "video_weights": "heads.video_weights.", "text_weights": "heads.text_weights.",
    "vision_proj": "model.vision_proj.", "text_proj": "model.text_proj.",
}


def _reached(task, loss) -> set[str]:
    task.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    out = set()
    for name, p in task.named_parameters():
        if p.grad is not None and p.grad.abs().sum() > 0:
            out |= {g for g, prefix in GROUPS.items() if name.startswith(prefix)}
    return out


def test_each_loss_term_reaches_what_it_should_and_nothing_else():
    task, _ = _task()
    torch.manual_seed(0)
    for p in task.heads.parameters():  # the zero-initialised weight heads would hide their own gradients
        torch.nn.init.normal_(p, std=0.1)
    losses, report = task(_batch(), torch.Generator().manual_seed(0))
    assert set(losses) == {"vtc_loss", "vtc_h_loss", "vvc_h_loss", "vtc_l_loss", "vvc_l_loss", "adv_loss"}
    for k, v in losses.items():
        assert torch.isfinite(v), k
    assert 0 < float(report["masked_h"]) < 1 and 0 < float(report["masked_l"]) < 1
    common = {"encoder", "cls", "temporal", "video_weights", "vision_proj"}
    want = {
        "vtc_loss": common | {"text_weights", "text_proj"},  # the clean video and the text train here
        "vtc_h_loss": common | {"reconstructor"},  # text target detached; the H-completer has a reconstructor
        "vvc_h_loss": common | {"reconstructor"},  # the unmasked video target detached
        "vtc_l_loss": common,  # no reconstructor in the L-completer, no discriminator
        "vvc_l_loss": common,
        "adv_loss": {"encoder", "cls", "temporal", "discriminator"},  # pooled before the projection
    }
    for name, groups in want.items():
        assert _reached(task, losses[name]) == groups, name


def test_the_discriminator_gradient_is_reversed_into_the_encoders(monkeypatch):
    import vidmask.tasks.mascot as mascot

    def adv_grads():
        task, _ = _task(**{"finetune.mascot.high.weight": 0, "finetune.mascot.grl": 0.5})
        losses, _ = task(_batch(), torch.Generator().manual_seed(0))
        task.zero_grad()
        losses["adv_loss"].backward()
        return {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}

    reversed_ = adv_grads()
    monkeypatch.setattr(mascot, "grad_reverse", lambda x, scale: x)  # the same step with no reversal
    plain = adv_grads()
    assert set(reversed_) == set(plain)
    for name in plain:
        if name.startswith("heads.discriminator."):
            torch.testing.assert_close(reversed_[name], plain[name])  # D minimises its loss
        else:
            torch.testing.assert_close(reversed_[name], -0.5 * plain[name], atol=1e-6, rtol=1e-4)


def test_masks_come_from_the_models_own_cls_attention():
    task, _ = _task(**{"finetune.mascot.low.weight": 0})
    batch = _batch()
    _, attn = task.encode(batch["video"], return_attn=True)  # (B, T, N)
    assert attn.shape == (4, 4, 4) and (attn >= 0).all() and (attn.sum(-1) < 1).all()  # the CLS's own share left out
    g = torch.Generator().manual_seed(5)
    keep = task.maskers["h"](task.model.visual.patchify(batch["video"]), attn=attn, generator=g).keep
    # inside the tube, the masked positions are the top floor(0.7 * N) by attention averaged over the interval
    masked_frames = (~keep).any(-1)  # (B, T)
    for b in range(4):
        frames = masked_frames[b].nonzero().flatten()
        mean = attn[b, frames].mean(0)  # (N,)
        top = set(mean.topk(math.floor(0.7 * 4)).indices.tolist())
        assert set((~keep[b, frames[0]]).nonzero().flatten().tolist()) == top


@pytest.mark.parametrize("over, terms", [
    ({"finetune.mascot.low.weight": 0, "finetune.mascot.high.reconstructor": "none",
      "finetune.mascot.high.co_encoder": "full"}, {"vtc_loss", "vtc_h_loss", "vvc_h_loss"}),  # H: T + V
    ({"finetune.mascot.high.weight": 0, "finetune.mascot.low.discriminator": False},
     {"vtc_loss", "vtc_l_loss", "vvc_l_loss"}),  # L: T + V_u
    ({"finetune.mascot.high.weight": 0, "finetune.mascot.low.weight": 0}, {"vtc_loss"}),  # plain WTI fine-tuning
])
def test_component_rows_build_only_what_they_use(over, terms):
    task, _ = _task(**over)
    losses, _ = task(_batch(), torch.Generator().manual_seed(0))
    assert set(losses) == terms
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in task.parameters() if p.requires_grad)  # DDP needs no unused params


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="finetune.mascot.high.reconstructor"):
        load_config(None, ["finetune.task=retrieval", "finetune.method=mascot",
                           "finetune.mascot.high.reconstructor=both"])
    with pytest.raises(ConfigError, match="finetune.similarity=wti needs finetune.method=mascot"):
        load_config(None, ["finetune.task=retrieval", "finetune.similarity=wti"])
    with pytest.raises(ConfigError, match="vidmask finetune retrieval"):
        load_config(None, ["finetune.task=qa", "finetune.method=mascot"])
    from vidmask.train.run import make_job

    with pytest.raises(ConfigError, match="not pretraining"):
        make_job(load_config(None, ["finetune.method=mascot", "model.text.init=random"]), torch.device("cpu"),
                 evaluating=True)
    with pytest.raises(ConfigError, match="finetune.mascot.low.mask"):
        load_config(None, ["finetune.task=retrieval", "finetune.method=mascot", "finetune.mascot.low.mask=nope"])


def test_modules_learn_faster_than_the_encoders():
    from vidmask.train.optim import param_groups

    task, cfg = _task()
    groups = param_groups(task, 0.05, lr_scales=task.lr_scales)
    scaled = {id(p) for g in groups if g["lr_scale"] == cfg.finetune.mascot.module_lr_scale for p in g["params"]}
    assert scaled == {id(p) for p in task.heads.parameters()}
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in task.parameters() if p.requires_grad)


# ------------------------------------------------------------------ the command line


def test_finetune_mascot_and_eval_with_both_similarities(tiny_set, tmp_path):
    from test_train import TINY, vidmask

    run = tmp_path / "mascot"
    vidmask("finetune", "retrieval", "--config", "configs/finetune/mascot.yaml", f"data.corpus={tiny_set}", *TINY,
            "train.steps=2", "finetune.mascot.temporal_heads=2", f"run_dir={run}")
    res = json.loads((run / "eval_retrieval.json").read_text())
    assert res["similarity"] == "wti" and {"t2v", "v2t", "rsum"} <= set(res)
    again = tmp_path / "again.json"
    vidmask("eval", "retrieval", "--run", str(run), "--json", str(again))
    assert json.loads(again.read_text())["t2v"] == res["t2v"]  # the eval command reproduces the run's evaluation
    p = vidmask("eval", "retrieval", "--run", str(run), "--similarity", "mean", "--json", str(again))
    assert json.loads(again.read_text())["similarity"] == "mean" and "scored by mean" in p.stdout
    bad = vidmask("eval", "retrieval", "--run", str(run), "--similarity", "cosine", check=False)
    assert bad.returncode == 2 and "finetune.similarity" in bad.stderr


def test_bench_rows_map_to_distinct_runs():
    """bench/mascot.py reuses a run across its two tables only when the settings are the same."""
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"
    sys.path.insert(0, str(bench))
    try:
        import mascot as table
    finally:
        sys.path.remove(str(bench))
    keys = {label: table.run_key(config, over) for _, label, config, over in table.ROWS}
    assert keys["high-informed 70%"] == keys["H: T + V_u + R_u (H)"]  # the same configuration in both tables
    assert len(set(keys.values())) == len(keys) - 1  # every other row is its own run
    for _, label, config, over in table.ROWS:  # every row's overrides are valid config keys
        if config is not None:
            load_config(config, ["finetune.task=retrieval", *over])
