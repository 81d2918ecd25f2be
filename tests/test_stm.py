"""STM as its authors ran it (docs/fidelity.md, STM): each piece against a slow reference.

The mask module (windows, per-frame maps, the blended score, the masked
direction, the straight-through gradient), ILA's message passing, the
two-pass step (which tokens each loss sees), the per-layer decoders over all
tokens, the teacher's patch embeddings, and the `stm` recipe end to end.
"""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vidmask.config import ConfigError, LossConfig, ModelConfig, TextConfig, load_config
from vidmask.masking import build_masker, gather_tokens, keep_to_ids, masker_inputs, masker_token_dim
from vidmask.masking.stm import StmMasker, gumbel_topk
from vidmask.masking.umt import gumbel_noise
from vidmask.models import VideoTextModel
from vidmask.models.ila import JITTER, Ila, jittered_window_map, per_frame, window_map
from vidmask.objectives import ObjectiveEnv, StepContext
from vidmask.objectives.stm_decoder import Stm, StmConfig, stm_loss
from vidmask.objectives.vtc import vtc_loss
from vidmask.tasks import PretrainTask
from vidmask.teachers import TeacherOut, build_teacher
from vidmask.teachers.base import tubelet_mean
from vidmask.train import checkpoint as ckpt
from vidmask.train.optim import param_groups

CAPTIONS = ["a red circle moves left", "a blue square grows", "two stars spin"]


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- slow references ------------------------------------------------------------------------------------


def ref_window(px: float, py: float, side: int) -> torch.Tensor:
    """STM's ``aligned_mask_generation`` for one point, written out per grid cell (both pairs of conditions)."""

    def axis(c: float, p: float) -> float:
        e = c - p
        first = 1.0 if -0.25 <= e <= 0.25 else 0.0
        second = 1 - (abs(e) - 0.25) * 1.5
        second = max((1 - first) * second * (1.0 if second >= 0 else 0.0), 0.0)
        first2 = 1.0 if (-0.35 <= e <= 0.35 and e > 0.25) else 0.0
        second2 = max((1 - first2) * 1.0, 0.0)
        return first + second + first2 + second2

    coords = [i / (side - 1) * 2 - 1 for i in range(side)]
    return torch.tensor([[axis(coords[y], py) * axis(coords[x], px) for x in range(side)] for y in range(side)])


def ref_jittered(point, side: int, jitter: float) -> torch.Tensor:
    """The mean over ILA's 9 jittered copies: [side*side]."""
    px, py = float(point[0]), float(point[1])
    maps = [ref_window(px + dx * jitter, py + dy * jitter, side) for dx, dy in JITTER]
    return torch.stack(maps).mean(0).flatten()


def ref_frames(first: list, second: list, last: str) -> list:
    """Pair values -> frame values, one frame at a time."""
    P = len(first)
    out = []
    for t in range(P + 1):
        if t == 0:
            out.append(first[0])
        elif t == P:
            out.append(second[P - 1] if last == "second" else first[P - 1])
        else:
            out.append((first[t] + second[t - 1]) / 2)
    return out


def ref_points(aligner, x: torch.Tensor) -> torch.Tensor:
    """ILA's points pair by pair: x [B,T,N,D] -> [B,T-1,4] (eval mode: batch norm per sample)."""
    B, T, N, D = x.shape
    side = math.isqrt(N)
    out = torch.zeros(B, T - 1, 4)
    for b in range(B):
        for p in range(T - 1):
            pair = torch.cat([x[b, p], x[b, p + 1]], -1).T.reshape(1, 2 * D, side, side)  # frame t, then t+1
            pooled = aligner.pool(aligner.extract(pair)).flatten(1)  # (1, ch/2)
            out[b, p] = 0.75 * aligner.points(pooled.unsqueeze(-1)).squeeze(-1)[0]
    return out


# ---- windows and per-frame maps --------------------------------------------------------------------------


def test_window_map_is_stm_aligned_mask_generation():
    g = gen(0)
    points = torch.rand(5, 2, generator=g) * 2 - 1
    points[0] = torch.tensor([0.0, 0.0])
    points[1] = torch.tensor([0.3, -0.6])  # lands on the 0.25 < e <= 0.35 band and the ramp's ends
    for side in (4, 7):
        got = window_map(points, side)  # (5, side*side)
        for i in range(5):
            torch.testing.assert_close(got[i], ref_window(float(points[i, 0]), float(points[i, 1]), side).flatten())
        got = jittered_window_map(points, side, 0.2)
        for i in range(5):
            torch.testing.assert_close(got[i], ref_jittered(points[i], side, 0.2))
    # x moves along a row, y along a column (token y * side + x)
    right = window_map(torch.tensor([1.0, -1.0]), 4).reshape(4, 4)
    assert right[0, 3] == right.max() and right[3, 0] == right.min()


@pytest.mark.parametrize("last", ["first", "second"])
def test_per_frame_takes_the_two_pairs_of_each_frame(last):
    g = gen(1)
    first, second = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)  # 4 pairs, 5 frames
    got = per_frame(first, second, last)
    for b in range(2):
        want = ref_frames(list(first[b]), list(second[b]), last)
        torch.testing.assert_close(got[b], torch.stack(want))
    two = per_frame(first[:, :1], second[:, :1], last)  # T = 2: one pair
    torch.testing.assert_close(two[:, 1], (second if last == "second" else first)[:, 0])


# ---- the mask module -------------------------------------------------------------------------------------


def stm_inputs(B=2, T=4, side=4, W=12, seed=0):
    g = gen(seed)
    tokens = torch.randn(B, T, side * side, W, generator=g)  # patch embeddings
    attn = torch.rand(B, T, side * side, generator=g).pow(3)
    return tokens, attn / attn.sum(-1, keepdim=True)


def perturbed(masker: StmMasker, seed: int = 5) -> StmMasker:
    """Points away from the centre: the zero-initialised last layer of the point predictor made random."""
    with torch.no_grad():
        last = masker.align.points[2]
        last.weight.copy_(torch.randn(last.weight.shape, generator=gen(seed)))
        last.bias.copy_(torch.randn(last.bias.shape, generator=gen(seed + 1)))
    return masker


def test_stm_scores_match_a_slow_reference():
    tokens, attn = stm_inputs()
    B, T, N, _ = tokens.shape
    masker = perturbed(StmMasker(ratio=0.7, token_dim=12, width=8, channels=16)).eval()
    with torch.no_grad():
        masker.lam.fill_(0.3)
        got = masker.scores(tokens, attn)  # (B, T, N)
        x = masker.norm(masker.fc(tokens))  # STM's temp_fc, temp_ln
        points = ref_points(masker.align, x)  # (B, T-1, 4)
    assert points.abs().max() > 0.05  # the windows really move
    for b in range(B):
        first = [ref_jittered(points[b, p, :2], 4, 0.2) for p in range(T - 1)]
        second = [ref_jittered(points[b, p, 2:], 4, 0.2) for p in range(T - 1)]
        # AlignMask's rule: the last frame's window is pair T-2's first point
        for t, aligned in enumerate(ref_frames(first, second, "first")):
            blend = 0.3 * aligned.softmax(0) + 0.7 * attn[b, t]
            torch.testing.assert_close(got[b, t], blend.softmax(0), atol=1e-6, rtol=1e-5)


def test_gumbel_topk_masks_the_top_of_the_score():
    g = gen(2)
    score = torch.rand(3, 5, 16, generator=g)
    hard, soft = gumbel_topk(score, 11, 0.05, torch.zeros_like(score))  # no noise: the score alone decides
    assert (hard.sum(-1) == 11).all()
    top = score.topk(11, -1).indices
    assert torch.equal(hard, torch.zeros_like(hard).scatter(-1, top, True))  # the highest scores are MASKED
    torch.testing.assert_close(soft, (score / 0.05).softmax(-1))
    noise = gumbel_noise(score.shape, gen(3), "cpu")
    hard, _ = gumbel_topk(score, 11, 0.05, noise)
    assert torch.equal(hard, torch.zeros_like(hard).scatter(-1, (score + noise).topk(11, -1).indices, True))


def test_stm_masker_hides_the_gumbel_top_k_of_its_score():
    tokens, attn = stm_inputs(side=8)
    B, T, N, _ = tokens.shape
    masker = perturbed(StmMasker(ratio=0.7, token_dim=12, width=8, channels=16))
    out = masker(tokens, attn=attn, generator=gen(7))
    n_mask = int(N * 0.7)  # STM's count: int(64 * 0.7) = 44 masked, 20 kept
    assert masker.kept_per_frame(N) == N - n_mask == 20 and (out.keep.sum(-1) == 20).all()
    with torch.no_grad():
        # the module draws one standard Gumbel tensor [B,T,N] from the generator
        key = masker.scores(tokens, attn) + gumbel_noise((B, T, N), gen(7), "cpu")
    masked = torch.zeros(B, T, N, dtype=torch.bool).scatter(-1, key.topk(n_mask, -1).indices, True)
    assert torch.equal(~out.keep, masked)
    assert torch.equal(out.ids_keep, keep_to_ids(out.keep))
    assert torch.equal(out.saliency, masker.scores(tokens, attn).detach())
    assert masker.video_text_set == "masked" and masker.inputs == "patch_embeds"
    with pytest.raises(ValueError, match="at least 2"):
        masker(tokens[:, :1], attn=attn[:, :1], generator=gen(0))
    with pytest.raises(ValueError, match="side >= 4"):
        masker(tokens[:, :, :9], attn=attn[:, :, :9], generator=gen(0))
    with pytest.raises(ValueError, match="masks no token"):  # the second pass would encode nothing
        StmMasker(ratio=0.01, token_dim=12, width=8, channels=16)(tokens, attn=attn, generator=gen(0))


def test_stm_straight_through_is_stms_and_reaches_the_module_and_lambda():
    """The weights carry ``y_hard - y_soft.detach() + y_soft`` (STM's): kept tokens x (1 - mask), masked x mask."""
    tokens, attn = stm_inputs(side=4, seed=3)
    B, T, N, _ = tokens.shape
    feats = torch.randn(B, T * N, 6, generator=gen(4))  # what the encoder would multiply

    def grads(loss_fn):
        torch.manual_seed(0)  # the same module for both
        masker = perturbed(StmMasker(ratio=0.5, token_dim=12, width=8, channels=16, tau=0.5))
        loss_fn(masker).backward()
        return masker.lam.grad.clone(), masker.fc.weight.grad.clone(), masker.align.points[2].weight.grad.clone()

    def ours(masker):
        out = masker(tokens, attn=attn, generator=gen(9))
        assert torch.equal(out.token_weight.detach(), torch.ones_like(out.token_weight))  # exactly 1.0 forward
        assert torch.equal(out.masked_weight.detach(), torch.ones_like(out.masked_weight))
        kept = gather_tokens(feats, out.ids_keep) * out.token_weight.unsqueeze(-1)
        hidden = gather_tokens(feats, keep_to_ids(~out.keep)) * out.masked_weight.unsqueeze(-1)
        return kept.pow(2).sum() * 0.3 + hidden.sum() * 0.7

    def stms(masker):
        score = masker.scores(tokens, attn)  # (B, T, N)
        key = (score + gumbel_noise((B, T, N), gen(9), "cpu")) / masker.tau
        y_soft = key.softmax(-1)
        y_hard = torch.zeros_like(y_soft).scatter(-1, key.topk(N // 2, -1).indices, 1.0)
        mask = (y_hard - y_soft.detach() + y_soft).reshape(B, T * N, 1)  # 1 = masked
        x_vis, x_invis = feats * (1 - mask), feats * mask  # STM's first and second encoder passes
        sel = y_hard.reshape(B, T * N).bool()
        return x_vis[~sel].pow(2).sum() * 0.3 + x_invis[sel].sum() * 0.7

    got, want = grads(ours), grads(stms)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert got[0].abs() > 0 and got[1].abs().sum() > 0 and got[2].abs().sum() > 0
    # at STM's start the point predictor's last layer is zero: the gradient stops there, lam still learns
    masker = StmMasker(ratio=0.5, token_dim=12, width=8, channels=16, tau=0.5)
    out = masker(tokens, attn=attn, generator=gen(9))
    (gather_tokens(feats, out.ids_keep) * out.token_weight.unsqueeze(-1)).pow(2).sum().backward()
    assert masker.lam.grad.abs() > 0 and masker.align.points[2].weight.grad.abs().sum() > 0
    assert masker.fc.weight.grad.abs().sum() == 0


def test_lambda_learns_at_its_own_rate():
    masker = build_masker("stm", ratio=0.7, token_dim=12, width=8, channels=16)
    task = PretrainTask(small_model(), masker, LossConfig(), None, frames=2, grid=4)
    assert task.lr_scales == {"masker.lam": 500.0}  # STM: 5e-2 against its base 1e-4
    groups = param_groups(task, 0.05, lr_scales=task.lr_scales)
    own = [g for g in groups if any(p is masker.lam for p in g["params"])]
    assert len(own) == 1 and own[0]["lr_scale"] == 500.0 and own[0]["params"] == [masker.lam]
    assert all(g["lr_scale"] == 1.0 for g in groups if g is not own[0])
    assert build_masker("stm", ratio=0.7, token_dim=12, lambda_lr_scale=100.0).lr_scales == {"lam": 100.0}


# ---- ILA and the per-layer decoders ---------------------------------------------------------------------


def test_ila_message_passing_matches_a_loop():
    torch.manual_seed(0)
    B, T, side, D = 2, 4, 4, 6
    N = side * side
    ila = Ila(D, channels=16, jitter=0.2)
    perturbed(SimpleNamespace(align=ila.align))
    x = torch.randn(B, T, N, D, generator=gen(1))
    aligned, inter = ila(x)
    with torch.no_grad():
        feats, points = ila.align(x[:, :-1], x[:, 1:])  # (B, T-1, 16, s, s), (B, T-1, 4)
    half = 8
    for b in range(B):
        first = [ref_jittered(points[b, p, :2], side, 0.2).unsqueeze(-1) * x[b, p] for p in range(T - 1)]
        second = [ref_jittered(points[b, p, 2:], side, 0.2).unsqueeze(-1) * x[b, p + 1] for p in range(T - 1)]
        torch.testing.assert_close(aligned[b], torch.stack(ref_frames(first, second, "second")), atol=1e-5, rtol=1e-5)
        frames = ref_frames([feats[b, p, :half] for p in range(T - 1)], [feats[b, p, half:] for p in range(T - 1)],
                            "second")  # T x (half, s, s)
        mixed = ila.temporal(torch.stack(frames, 1).unsqueeze(0))[0]  # (half, T, s, s): kernel 3 over T
        for t in range(T):
            want = ila.fc(mixed[:, t].reshape(half, N).T)  # (N, D)
            torch.testing.assert_close(inter[b, t], want, atol=1e-5, rtol=1e-5)


def test_ila_temporal_conv_runs_in_float32_under_autocast():
    """CPU bf16 Conv3d backward gives non-finite weight gradients now and then at T = 2 (torch 2.13; it
    varies from run to run), so the temporal conv runs in float32: checked on its input and output."""
    torch.manual_seed(0)
    ila = Ila(8, channels=64)
    dtypes = []
    ila.temporal.register_forward_hook(lambda mod, inp, out: dtypes.append((inp[0].dtype, out.dtype)))
    x = torch.randn(4, 2, 16, 8, generator=gen(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        aligned, inter = ila(x)
    assert dtypes == [(torch.float32, torch.float32)]
    (aligned.float().sum() + inter.float().sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in ila.parameters() if p.grad is not None)


def small_model(depth: int = 3, frames: int = 4) -> VideoTextModel:
    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, depth=depth, heads=2, embed_dim=8, text=TextConfig(init="random"))
    return VideoTextModel(cfg, num_frames=frames, img_size=64)  # 4x4 grid


def test_stm_decoders_reconstruct_all_tokens_against_the_teachers_last_layers():
    B, T, side, D, k = 2, 3, 4, 5, 2
    N, L = side * side, T * side * side
    model = small_model()
    teacher = SimpleNamespace(token_dim=D, max_layers=3, name="fake")
    env = ObjectiveEnv(model=model, teacher=teacher, frames=T, grid=side)
    stm = Stm(StmConfig(weight=1.0, layers=k, channels=16), env)
    assert stm.student_layers() == k and stm.teacher_layers() == k
    assert isinstance(stm.text_proj, torch.nn.Linear)  # text width 64, student 16
    keep = torch.rand(B, T, N, generator=gen(2)).argsort(-1) < 5  # 5 kept per frame
    ids = keep_to_ids(keep)  # (B, K)
    layers = [torch.randn(B, ids.shape[1], 16, generator=gen(10 + i)) for i in range(3)]  # the last 3 blocks, raw
    maps = [torch.randn(B, T, N, D, generator=gen(20 + i)) for i in range(3)]  # the teacher's last 3, oldest first
    pooled = torch.randn(B, model.text.width, generator=gen(3), requires_grad=True)
    ctx = StepContext(model=model, video=None, captions=[], masking=SimpleNamespace(ids_keep=ids, keep=keep),
                      feats=None, layers=layers, video_feat=None, text_feat=None,
                      teacher_out=TeacherOut(tokens=maps[-1], attn=None, video=None, layers=maps), teacher=None,
                      fusion=None, generator=None, frames=T, tokens=N, text_pooled=pooled)
    got = stm(ctx)["stm_loss"]

    visual = model.visual
    pos = visual.pos_embed(T, side).reshape(L, 16)
    text = stm.text_proj(pooled)  # (B, C)
    total, preds = 0.0, []
    for i in range(k):
        normed = visual.norm(layers[3 - k + i])  # the encoder's final norm
        filled, visible = torch.zeros(B, L, 16), torch.zeros(B, L, 16)
        for b in range(B):
            where = {int(l): j for j, l in enumerate(ids[b])}
            for l in range(L):
                filled[b, l] = (normed[b, where[l]] if l in where else text[b]) + pos[l]  # text in every masked slot
                visible[b, l] = (normed[b, where[l]] if l in where else 0.0) + pos[l]
        pred = stm.decoders[i](filled, visible, T)  # (B, T, N, D)
        preds.append(pred)
        target = maps[3 - k + i]  # decoder i against teacher layer i of the last k
        for b in range(B):
            for t in range(T):
                for n in range(N):  # all tokens, visible and masked
                    total += float(2 - 2 * F.cosine_similarity(pred[b, t, n].detach(), target[b, t, n], dim=0))
    assert got.item() == pytest.approx(total / (k * B * L), rel=1e-5)
    assert stm_loss(preds, maps[-k:])["stm_loss"].item() == pytest.approx(got.item(), rel=1e-6)

    # every token counts: a changed target at a kept position changes the loss
    changed = [m.clone() for m in maps]
    changed[-1][keep] += 3.0
    ctx.teacher_out = TeacherOut(tokens=changed[-1], attn=None, video=None, layers=changed)
    assert abs(stm(ctx)["stm_loss"].item() - got.item()) > 1e-4
    # the caption reaches the masked slots only: a kept position's prediction does not depend on it
    preds[-1].reshape(B, L, D)[keep.reshape(B, L)].sum().backward(retain_graph=True)
    assert pooled.grad is None or pooled.grad.abs().sum() == 0
    preds[-1].reshape(B, L, D)[~keep.reshape(B, L)].sum().backward()
    assert pooled.grad.abs().sum() > 0


def test_stm_decoder_refuses_what_it_cannot_do():
    model = small_model(depth=2)
    teacher = SimpleNamespace(token_dim=5, max_layers=1, name="lit-effnet")
    with pytest.raises(ConfigError, match="at most 1"):
        Stm(StmConfig(weight=1.0, layers=2), ObjectiveEnv(model=model, teacher=teacher, frames=3, grid=4))
    with pytest.raises(ConfigError, match="model.depth=2"):
        Stm(StmConfig(weight=1.0, layers=3), ObjectiveEnv(model=model, teacher=teacher, frames=3, grid=4))
    with pytest.raises(ConfigError, match="at least 2 token frames"):
        Stm(StmConfig(weight=1.0), ObjectiveEnv(model=model, teacher=teacher, frames=1, grid=4))
    with pytest.raises(ConfigError, match="multiple of 8"):
        load_config(None, ["teacher.name=lit-effnet", "loss.stm.weight=1", "loss.stm.channels=12"])


# ---- the two-pass step -----------------------------------------------------------------------------------


def two_pass_task(tiny_clip_dir, loss: LossConfig):
    teacher = build_teacher("hf-clip", path=str(tiny_clip_dir))
    masker = build_masker("stm", ratio=0.7, token_dim=masker_token_dim(16, teacher, "stm"), width=8, channels=16)
    return PretrainTask(small_model(), masker, loss, teacher, frames=4, grid=4)


def test_two_passes_visible_set_to_distillation_masked_set_to_vtc_vtm_mlm(tiny_clip_dir, monkeypatch):
    from vidmask.objectives import mlm as mlm_mod, vtm as vtm_mod

    loss = LossConfig(vtc=1.0, vtm=1.0, mlm=1.0, stm={"weight": 1.0, "layers": 2, "channels": 16})
    task = two_pass_task(tiny_clip_dir, loss)
    assert task.masker.inputs == "patch_embeds" and task.teacher.patch_dim == 32
    seen: dict = {}
    for name, objective in task.objectives.items():
        def record(ctx, _forward=objective.forward, _name=name):
            seen[_name] = ctx
            return _forward(ctx)
        objective.forward = record
    fused = {}
    for mod, fn in ((vtm_mod, "vtm_loss"), (mlm_mod, "mlm_loss")):
        def spy(*args, _orig=getattr(mod, fn), _fn=fn, **kw):
            fused[_fn] = args[4]  # the video tokens the fusion layers attend to
            return _orig(*args, **kw)
        monkeypatch.setattr(mod, fn, spy)
    video = torch.randn(3, 4, 3, 64, 64, generator=gen(0))
    losses, report = task({"video": video, "caption": CAPTIONS}, gen(1))
    assert set(losses) == {"vtc_loss", "vtm_loss", "mlm_loss", "stm_loss"}
    assert report["encoder_tokens"] == 64 and report["kept_tokens"] == 4 * 5  # both passes: every token
    assert all(torch.isfinite(v) for v in losses.values())

    ctx = seen["stm"]
    assert all(c is ctx for c in seen.values())
    out, visual = ctx.masking, task.model.visual
    N, L = 16, 64
    assert (out.keep.sum(-1) == N - int(N * 0.7)).all()  # 5 kept, 11 masked per frame
    assert torch.equal(ctx.video_ids, keep_to_ids(~out.keep))  # the complementary set, ascending
    both = torch.cat([out.ids_keep, ctx.video_ids], 1).sort(1).values
    assert torch.equal(both, torch.arange(L).expand(3, L))  # disjoint, together every token
    with torch.no_grad():
        # pass 1: the kept (visible) tokens, weighted by 1 - mask: the decoders read its last 2 blocks
        kept = visual.forward_features(visual.embed_kept(video, out.ids_keep), None, out.token_weight,
                                       return_layers=2)
        # pass 2: the masked tokens, weighted by mask: what vtc, vtm and mlm read
        hidden = visual.forward_features(visual.embed_kept(video, ctx.video_ids), None, out.masked_weight).tokens
        pooled = task.model.text(CAPTIONS)
        torch.testing.assert_close(ctx.feats, kept.tokens)
        for a, b in zip(ctx.layers, kept.layers):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(ctx.video_tokens, hidden)
        torch.testing.assert_close(ctx.video_feat, task.model.project_video(hidden))
        torch.testing.assert_close(ctx.text_pooled, pooled)
        want = vtc_loss(task.model.project_video(hidden), task.model.project_text(pooled),
                        task.model.temperature_scale())["vtc_loss"]
        torch.testing.assert_close(losses["vtc_loss"], want)
        assert fused["vtm_loss"] is ctx.video_tokens and fused["mlm_loss"] is ctx.video_tokens
        assert ctx.video_tokens.shape == (3, L - out.ids_keep.shape[1], 16)
        torch.testing.assert_close(ctx.video_weight, out.masked_weight)


@pytest.mark.parametrize("term", ["vtc_loss", "stm_loss"])
def test_each_pass_carries_the_gradient_to_lambda(tiny_clip_dir, term):
    loss = LossConfig(vtc=1.0, stm={"weight": 1.0, "layers": 1, "channels": 16})
    task = two_pass_task(tiny_clip_dir, loss)
    losses, _ = task({"video": torch.randn(3, 4, 3, 64, 64, generator=gen(0)), "caption": CAPTIONS}, gen(1))
    losses[term].backward()  # vtc: the masked pass only; stm: the kept pass only
    assert task.masker.lam.grad is not None and task.masker.lam.grad.abs() > 0


def test_one_pass_strategies_read_one_set(tiny_clip_dir):
    teacher = build_teacher("hf-clip", path=str(tiny_clip_dir))
    task = PretrainTask(small_model(), build_masker("stm-guided", ratio=0.5, token_dim=teacher.token_dim),
                        LossConfig(vtc=1.0), teacher, frames=4, grid=4)
    seen = {}
    forward = task.objectives["vtc"].forward
    task.objectives["vtc"].forward = lambda ctx: seen.setdefault("ctx", ctx) and forward(ctx)
    _, report = task({"video": torch.randn(3, 4, 3, 64, 64, generator=gen(0)), "caption": CAPTIONS}, gen(1))
    assert report["encoder_tokens"] == report["kept_tokens"]  # one pass
    ctx = seen["ctx"]
    assert ctx.video_tokens is ctx.feats and ctx.video_ids is ctx.masking.ids_keep
    assert ctx.video_weight is ctx.masking.token_weight
    # the official module with video_text_set=kept is one pass too (an ablation)
    one = build_masker("stm", ratio=0.7, token_dim=32, width=8, channels=16, video_text_set="kept")
    assert one.video_text_set == "kept"


# ---- the teacher's patch embeddings ----------------------------------------------------------------------


def test_hf_clip_gives_its_patch_embeddings_before_the_transformer(tiny_clip_dir):
    teacher = build_teacher("hf-clip", path=str(tiny_clip_dir))
    video = torch.randn(2, 4, 3, 64, 64, generator=gen(0))
    out = teacher(video, patch_embeds=True)
    conv = teacher.model.vision_model.embeddings.patch_embedding  # CLIP's conv1: no class token, no positions
    with torch.no_grad():
        want = conv(video.flatten(0, 1)).flatten(2).transpose(1, 2).reshape(2, 4, 16, 32)
    torch.testing.assert_close(out.patch_embeds, want)
    assert teacher.patch_dim == 32 and teacher(video).patch_embeds is None
    pooled = tubelet_mean(out, 2)
    torch.testing.assert_close(pooled.patch_embeds, want.reshape(2, 2, 2, 16, 32).mean(2))
    tokens, attn = masker_inputs(None, out, "patch_embeds")
    torch.testing.assert_close(tokens, want)
    torch.testing.assert_close(attn, out.attn)
    assert masker_token_dim(16, teacher, "stm") == 32 and masker_token_dim(16, teacher, "umt") == 24


def test_without_patch_embeddings_the_module_reads_the_pixel_patches():
    teacher = build_teacher("lit-effnet")  # a CNN: no patch embedding
    video = torch.randn(1, 2, 3, 64, 64, generator=gen(0))
    out = teacher(video, grid=4, patch_embeds=True)
    assert teacher.patch_dim == 0 and out.patch_embeds is None
    patches = torch.randn(1, 2, 16, 768, generator=gen(1))
    tokens, attn = masker_inputs(patches, out, "patch_embeds")
    assert torch.equal(tokens, patches) and torch.equal(attn, out.attn.float())  # raw pixels, the teacher's attention
    assert masker_token_dim(16, teacher, "stm") == 768 and masker_token_dim(16, None, "stm", tubelet=2) == 1536


def test_a_teacher_cache_without_patch_embeddings_is_refused(tiny_clip_dir):
    teacher = build_teacher("hf-clip", path=str(tiny_clip_dir))
    masker = build_masker("stm", ratio=0.7, token_dim=32, width=8, channels=16)
    with pytest.raises(ConfigError, match="patch embeddings"):
        PretrainTask(small_model(), masker, LossConfig(), teacher, frames=4, grid=4, teacher_cache=object())


# ---- old stm runs are stm-guided ------------------------------------------------------------------------


def test_an_old_stm_run_loads_as_stm_guided(tmp_path):
    old = tmp_path / "config.yaml"  # a run folder's config.yaml holds every section, stm's old fields included
    old.write_text("mask: {strategy: stm, ratio: 0.8, params: {}}\nteacher: {name: lit-effnet}\n"
                   "loss: {vtc: {weight: 1.0}, stm: {weight: 1.0, decoder_dim: 64, positions: masked}}\n")
    cfg = load_config(old)
    assert cfg.mask.strategy == "stm-guided" and cfg.loss["stm-guided"].decoder_dim == 64
    assert cfg.loss.stm.weight == 0.0
    new = load_config("configs/recipes/stm.yaml")  # today's stm sections are left alone
    assert new.mask.strategy == "stm" and new.loss.stm.weight == 1.0
    t = torch.zeros(1)
    assert set(ckpt.upgrade_names({"objectives.stm.decoder.head.weight": t, "masker.proj.weight": t}, 2)) == {
        "objectives.stm-guided.decoder.head.weight", "masker.proj.weight"}
    assert set(ckpt.upgrade_names({"stm_decoder.head.weight": t, "masker_module.x": t}, 1)) == {
        "objectives.stm-guided.decoder.head.weight"}
    assert set(ckpt.upgrade_names({"objectives.stm.decoders.0.head.weight": t}, 3)) == {
        "objectives.stm.decoders.0.head.weight"}


# ---- the recipe, end to end ------------------------------------------------------------------------------


def test_stm_recipe_trains_end_to_end(tiny_set, tmp_path):
    from safetensors.torch import load_file

    from test_recipes_unchanged import ROOT, TINY
    from vidmask.cli import main

    run = tmp_path / "run"
    args = ["pretrain", "--config", str(ROOT / "configs" / "recipes" / "stm.yaml"), f"data.corpus={tiny_set}",
            *TINY, "data.test_anno=", "train.steps=4", f"run_dir={run}"]
    assert main(args) == 0
    with (run / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("loss")]
    terms = sorted(k for k in rows[0] if k.endswith("_loss"))
    assert terms == ["mlm_loss", "stm_loss", "vtc_loss", "vtm_loss"]
    for r in rows:
        assert all(math.isfinite(float(r[k])) for k in (*terms, "loss")), r
    weights = load_file(str(run / "checkpoints" / "step_000004" / "model.safetensors"))
    assert float(weights["masker.lam"]) != 0.5  # lam learned (at 100 x train.lr)
    assert any(k.startswith("objectives.stm.decoders.0.ila.") for k in weights)
