"""Masking benchmark: what each strategy costs next to one training step, and
ClusterSTM against a straight transcription of its pseudocode.

    python bench/masking.py            # writes bench/results/masking.md (a few minutes on 2 cores)

Measured on CPU at tokens [8, T, 196, 768], T = 8 and 16, mask ratio 0.85:

1. every registered strategy's time as a ratio to one forward + backward of a
   ViT-B/16-sized encoder (12 vidmask ``Block``s, dim 768, 12 heads, MLP 3072)
   on the kept tokens ``[8, T*29, 768]``;
2. ``clusterstm`` against :func:`reference_clusterstm`, the corrected
   pseudocode (supplement Algorithms I and II) transcribed as written, in the
   same run: masks asserted identical, times compared;
3. peak extra memory of both at T = 16, each in a fresh subprocess (Linux):
   once the input exists and a warm-up call on a tiny clip has run (library
   start-up is not the method's memory), the peak resident set is reset
   (``/proc/self/clear_refs``), the call runs, and the rise of ``VmHWM`` over
   the resident set before the call is the peak extra memory; tracemalloc
   cannot see torch's allocations. Printed next to the largest intermediates
   computed by hand;
4. the batched path (``impl="batched"``, for accelerators) against the loop
   (``impl="loop"``, the CPU default) for ``clusterstm`` (its ``select`` and
   ``cluster`` options), ``density-topk`` and ``cluster-random``: aten
   operations and host syncs per call at B = 64, T = 8 (``--sync-batch``),
   counted with a ``TorchDispatchMode``, masks asserted identical; and the
   time of both at B = 8 on this CPU, T = 8 with N = 64 and 196, T = 16 with
   N = 196 (what ``impl="auto"`` on CPU is decided by).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from vidmask.masking import build_masker, list_maskers, strategy_ratio  # noqa: E402
from vidmask.masking.clusterstm import (  # noqa: E402
    _CHUNK_BYTES, DC_MIN, DEFAULT_DC_RATIO, GROUP_BYTES, clusterstm_keep, num_clusters)

B, N, C, RATIO = 8, 196, 768, 0.85
FRAMES = (8, 16)
MIB = 2**20


# ----------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------


def synthetic_clip(b: int, t: int, n: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Video-like tokens: ~10 objects per clip as drifting Voronoi regions, a
    per-position texture and per-frame noise; attention peaked on a few objects."""
    g = torch.Generator().manual_seed(seed)
    grid = math.isqrt(n)
    yx = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1)
    yx = yx.reshape(-1, 2).float() / grid  # (n, 2)
    objects = 10
    protos = torch.randn(b, objects, c, generator=g)  # (b, O, c)
    start = torch.rand(b, 1, objects, 2, generator=g)
    velocity = 0.03 * torch.randn(b, 1, objects, 2, generator=g)
    centres = start + velocity * torch.arange(t).view(1, t, 1, 1)  # (b, t, O, 2)
    label = torch.cdist(yx.expand(b * t, n, 2), centres.reshape(b * t, objects, 2)).argmin(-1).view(b, t, n)
    texture = 0.5 * torch.randn(b, 1, n, c, generator=g)
    tokens = protos.gather(1, label.view(b, t * n, 1).expand(-1, -1, c)).view(b, t, n, c)
    tokens = tokens + texture + 0.5 * torch.randn(b, t, n, c, generator=g)  # (b, t, n, c)
    weight = torch.randn(b, objects, generator=g).mul(2.0).exp()  # (b, O)
    attn = weight.gather(1, label.view(b, -1)).view(b, t, n) * torch.rand(b, t, n, generator=g)
    return tokens, attn / attn.sum(-1, keepdim=True)


# ----------------------------------------------------------------------------
# the reference: the corrected pseudocode, transcribed
# ----------------------------------------------------------------------------


def reference_dpc(x, num_clusters, knn=5):
    """TCFormer's DPC-kNN on normalised tokens, with the density noise replaced by
    an index tie-break (the order vidmask documents). x: [M, N, C] -> [M, N]."""
    M, N, _ = x.shape
    dist = torch.cdist(x, x)  # (M, N, N)
    mean_sq = (dist.topk(knn, dim=-1, largest=False).values ** 2).mean(-1)  # (M, N)
    density = torch.exp(-mean_sq)
    order = torch.argsort(mean_sq, dim=-1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(N).expand(M, N))
    mask = rank[:, None, :] < rank[:, :, None]  # j denser than i
    dist_max = dist.flatten(1).max(dim=-1)[0][:, None, None]
    delta, _ = torch.where(mask, dist, dist_max).min(dim=-1)
    score = delta * density
    centres = torch.argsort(score, dim=-1, descending=True, stable=True)[:, :num_clusters].sort(-1).values
    clusters = torch.gather(dist, 2, centres[:, None, :].expand(M, N, num_clusters)).argmin(-1)
    clusters.scatter_(1, centres, torch.arange(num_clusters).expand(M, num_clusters))
    return clusters


def reference_tdc(x, dc_ratio):
    """Algorithm II as written (dc floored at DC_MIN, vidmask's one addition)."""
    B, T, N, C = x.shape
    spat_x = x.reshape(B * T, N, C)
    temp_x = x.unsqueeze(1).expand(-1, T, -1, -1, -1)
    mask = ~torch.eye(T, dtype=torch.bool)
    temp_x = temp_x[:, mask].reshape(B * T, (T - 1) * N, C)
    temp_dist = 1 - torch.matmul(spat_x, temp_x.transpose(-1, -2))
    dc = torch.quantile(temp_dist.view(B * T, -1), dc_ratio, dim=1, keepdim=True).view(B * T, 1, 1)
    dc = dc.clamp_min(DC_MIN)
    temp_rho = torch.sum(torch.exp(-((temp_dist / dc) ** 2)), dim=-1) / N
    return temp_rho


def reference_clusterstm(x, mask_ratio, dc_ratio):
    """Algorithm I, corrected ([:-1], flat_rho, one token per cluster with ties to
    the lowest index). Returns keep (True = kept), unlike the pseudocode's masks."""
    x = F.normalize(x, dim=-1)
    B, T, N, C = x.shape
    num_clusters = max(1, math.floor(N * (1 - mask_ratio) + 1e-9))
    clusters = reference_dpc(x.reshape(B * T, N, C), num_clusters)
    clusters = clusters.reshape(B * T, N)
    temp_rho = reference_tdc(x, dc_ratio)
    flat_rho = temp_rho.reshape(-1)
    flat_clusters = clusters.reshape(-1)
    max_clusters = clusters.max(dim=1).values + 1
    clusters_offset = torch.cat([torch.tensor([0]), max_clusters.cumsum(0)[:-1]])
    global_offset = clusters_offset.repeat_interleave(N)
    global_clusters = flat_clusters + global_offset
    num_global_clusters = int(clusters_offset[-1] + max_clusters[-1])
    sum_rho = torch.zeros(num_global_clusters).scatter_add(0, global_clusters, flat_rho)
    global_scores = flat_rho / (sum_rho[global_clusters] + 1e-12)
    max_per_cluster = torch.full((num_global_clusters,), -1e9)
    max_per_cluster.scatter_reduce_(0, global_clusters, global_scores, reduce="amax", include_self=True)
    is_max = global_scores == max_per_cluster[global_clusters]
    index = torch.arange(flat_rho.numel())
    big = flat_rho.numel()
    first = torch.full((num_global_clusters,), big).scatter_reduce(
        0, global_clusters, torch.where(is_max, index, big), reduce="amin", include_self=True
    )
    keep = torch.zeros(flat_rho.numel(), dtype=torch.bool)
    keep[first] = True
    return keep.reshape(B, T, N)


# ----------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------


def once(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed(fn, repeat: int = 3, warmup: int = 1) -> float:
    """Best of `repeat` runs after `warmup`: the machine is shared, and the
    minimum is the estimate least disturbed by other processes."""
    for _ in range(warmup):
        fn()
    return min(once(fn) for _ in range(repeat))


def encoder():
    try:
        from vidmask.models.blocks import Block

        blocks = [Block(768, 12, 4.0) for _ in range(12)]
        name = "vidmask Block x12 (768, 12 heads, MLP 3072)"
    except ImportError:  # pragma: no cover
        blocks = [torch.nn.TransformerEncoderLayer(768, 12, 3072, batch_first=True, norm_first=True) for _ in range(12)]
        name = "nn.TransformerEncoderLayer x12 (768, 12 heads, MLP 3072)"
    return torch.nn.Sequential(*blocks), name


def step_time(model, kept: int) -> float:
    x = torch.randn(B, kept, 768)

    def step():
        model.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()

    return timed(step, repeat=3)


def gram_floor(tokens: torch.Tensor) -> None:
    """The multiply-adds every exact float32 ClusterSTM must do and nothing else: each clip's
    upper block triangle of its Gram matrix (frame t against frames s >= t; the loop path's
    products, the same shapes), with no quantile, exp-sum, DPC or selection. Its time next to
    the step is the floor of the masker's share on this machine: the Gram grows with T^2, the
    step with T."""
    Bc, T, Nc, Cc = tokens.shape
    x = F.normalize(tokens.float(), dim=-1).reshape(Bc, T * Nc, Cc)  # (B, L, C)
    for b in range(Bc):
        for t in range(T):
            x[b, t * Nc : (t + 1) * Nc] @ x[b, t * Nc :].T  # (N, L - t*N)


def masker_for(name: str):
    return build_masker(name, ratio=strategy_ratio(name, RATIO), token_dim=C)


# ----------------------------------------------------------------------------
# the batched path against the loop: operations, host syncs, time
# ----------------------------------------------------------------------------

IMPL_SIZES = ((8, 64), (8, N), (16, N))  # (T, N) of the time comparison, at B clips
IMPL_CASES = [  # (label, strategy, params)
    ("`clusterstm`", "clusterstm", {}),
    ("`clusterstm` kmeans", "clusterstm", {"cluster": "kmeans"}),
    ("`clusterstm` adjacent", "clusterstm", {"select": "adjacent"}),
    ("`density-topk`", "density-topk", {}),
    ("`cluster-random`", "cluster-random", {}),
]
SYNC_OPS = {"_local_scalar_dense", "item", "nonzero", "masked_select", "is_nonzero", "equal", "unique", "_unique",
            "_unique2", "unique_consecutive", "repeat_interleave"}


class OpLog(TorchDispatchMode):
    """Counts the aten operations dispatched on this thread, and those that read a tensor back to
    the host (a device sync on an accelerator): .item() / int() / bool(), nonzero, boolean indexing."""

    def __init__(self):
        super().__init__()
        self.ops = self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops += 1
        if name in SYNC_OPS or (name.startswith("index") and len(args) > 1 and isinstance(args[1], (list, tuple))
                                and any(torch.is_tensor(i) and i.dtype == torch.bool for i in args[1])):
            self.syncs += 1
        return func(*args, **(kwargs or {}))


def counted(masker, tokens):
    """(MaskOut, OpLog) of one call, on one thread: the dispatch mode is per thread, so the loop's two
    clip workers (clusterstm._map_clips) are turned off while counting; the ops are the same."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with OpLog() as log:
            out = masker(tokens, generator=torch.Generator().manual_seed(0))
    finally:
        torch.set_num_threads(threads)
    return out, log


def same_out(a, b) -> bool:
    return all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in ((a.keep, b.keep), (a.ids_keep, b.ids_keep), (a.saliency, b.saliency), (a.clusters, b.clusters))
    )


def impl_section(sync_batch: int) -> list[str]:
    from vidmask.masking.clusterstm import clips_per_group

    frames = 8
    tokens, _ = synthetic_clip(sync_batch, frames, N, C, seed=64)
    rows = []
    for label, name, params in IMPL_CASES:
        density = name != "cluster-random" and params.get("select") != "adjacent"
        groups = -(-sync_batch // clips_per_group(frames, N, C, DEFAULT_DC_RATIO if density else None, sync_batch))
        logs = {}
        for impl in ("loop", "batched"):
            logs[impl] = counted(build_masker(name, ratio=RATIO, impl=impl, **params), tokens)
        assert same_out(logs["loop"][0], logs["batched"][0]), f"{label}: batched and loop masks differ"
        (lo, lo_log), (_, ba_log) = logs["loop"], logs["batched"]
        print(f"  {label}: loop {lo_log.ops} ops / {lo_log.syncs} syncs, batched {ba_log.ops} / {ba_log.syncs}",
              flush=True)
        rows.append([label, lo_log.ops, f"{lo_log.ops / sync_batch:.0f}", lo_log.syncs, groups, ba_log.ops,
                     ba_log.syncs])

    times = {}
    for frames, n in IMPL_SIZES:
        tokens, _ = synthetic_clip(B, frames, n, C, seed=frames)
        for label, name, params in IMPL_CASES:
            maskers = {impl: build_masker(name, ratio=RATIO, impl=impl, **params) for impl in ("loop", "batched")}
            gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
            assert same_out(maskers["loop"](tokens, generator=gen()), maskers["batched"](tokens, generator=gen()))
            runs = [(once(lambda: maskers["loop"](tokens, generator=gen())),
                     once(lambda: maskers["batched"](tokens, generator=gen()))) for _ in range(7)]
            times[label, frames, n] = (min(r for r, _ in runs), min(b for _, b in runs))
            print(f"  T={frames} N={n} {label}: loop {times[label, frames, n][0]:.3f} s, "
                  f"batched {times[label, frames, n][1]:.3f} s", flush=True)

    lines = [
        "",
        "## The batched path (`impl=batched`, for accelerators) vs the loop (`impl=loop`)",
        "",
        f"Operations and host syncs per call at tokens [{sync_batch}, 8, {N}, {C}], counted with a "
        "`TorchDispatchMode` (every aten op dispatched, views included; syncs: `_local_scalar_dense` "
        "(`.item()`, `int()`, `bool()`), `nonzero`, boolean indexing), on one thread; the two paths' "
        "masks asserted identical (keep, ids, density, clusters). The batched path runs in groups of "
        f"clips whose largest intermediate stays under `GROUP_BYTES` = {GROUP_BYTES // MIB} MiB.",
        "",
        "| strategy | loop: ops | loop: ops per clip | loop: host syncs | batched: groups | batched: ops "
        "| batched: host syncs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    lines += [
        "",
        f"Time per call on this CPU at tokens [{B}, T, N, {C}], best of 7 after a warm-up, interleaved; masks "
        "asserted identical:",
        "",
        "| strategy | T | N | loop (s) | batched (s) | batched / loop |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (label, frames, n), (t_loop, t_batched) in times.items():
        lines.append(f"| {label} | {frames} | {n} | {t_loop:.3f} | {t_batched:.3f} | {t_batched / t_loop:.2f} |")
    # the rule for impl=auto on CPU: the batched path only where it is at least as fast at both sizes
    faster = [label for label, _, _ in IMPL_CASES if all(times[label, t, n][1] <= times[label, t, n][0]
                                                          for t, n in ((8, 64), (16, 196)))]
    lines += [
        "",
        "`impl=auto` takes the loop on CPU (`clusterstm.resolve_impl`). Batched at least as fast as the loop at "
        "both T=8 N=64 and T=16 N=196 in this run: " + (", ".join(faster) if faster else "none") + ". "
        "`cluster-random`'s two paths run the same operations at B=8 (one group; the batched one only skips "
        "reading the kept count back), so its ratio measures the machine's noise.",
    ]
    return lines


# ----------------------------------------------------------------------------
# memory, in a fresh process
# ----------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_child(kind: str, frames: int) -> None:
    tokens, _ = synthetic_clip(B, frames, N, C)
    run = (lambda x: clusterstm_keep(x, RATIO)) if kind == "fast" else (lambda x: reference_clusterstm(x, RATIO, DEFAULT_DC_RATIO))
    run(tokens[:1, :2, :16])  # warm-up: library start-up and thread pools are not the method's memory
    # reset the peak (VmHWM) to the current resident set, so making the input does not count
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    run(tokens)
    after = _status_kib("VmHWM")
    print(json.dumps({"peak_extra_mib": (after - before) / 1024}))


def peak_extra_mib(kind: str, frames: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", kind, "--frames", str(frames)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_mib"]


def analytic_mib(frames: int) -> tuple[float, float]:
    """Largest live intermediates by hand (float32): (vidmask, reference)."""
    L = frames * N
    fc = max(1, min(frames, _CHUNK_BYTES // (N * L * 4)))  # frames per chunk of rows, as in clusterstm
    half_gram = frames * (frames + 1) // 2 * N * N
    one_clip = (half_gram + frames * N * C + fc * N * L) * 4 + fc * N * L  # + the comparison mask (bool)
    fast = min(B, 2) * one_clip  # two clips at once on a multi-core CPU (clusterstm._map_clips)
    ref = (B * frames * (frames - 1) * N * C + 3 * B * frames * N * (frames - 1) * N) * 4  # token copy, distances + sort + exp
    return fast / MIB, ref / MIB


# ----------------------------------------------------------------------------


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads, {platform.system()} {platform.release()}"


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(sync_batch: int = 64) -> None:
    started = time.perf_counter()
    torch.manual_seed(0)
    model, model_name = encoder()
    lines = [
        "# Masking benchmark",
        "",
        f"- machine: {machine()}",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- tokens [{B}, T, {N}, {C}], mask ratio {RATIO}; step = forward + backward of {model_name} "
        f"on the kept tokens [{B}, T*29, 768]",
        "- times are the best of 5 runs after a warm-up (the step: best of 3), on a machine shared with "
        f"other jobs (load average {load()} at the start); `clusterstm` and the reference are timed "
        "interleaved",
        "",
        "## Strategies vs one training step",
        "",
        "| T | strategy | time (ms) | ratio to step |",
        "|---|---|---:|---:|",
    ]
    compare, share, memory, floor = [], {}, {}, {}
    for frames in FRAMES:
        tokens, attn = synthetic_clip(B, frames, N, C, seed=frames)
        kept = frames * num_clusters(N, RATIO)
        step = step_time(model, kept)
        print(f"T={frames}: training step {step:.2f} s", flush=True)
        lines.append(f"| {frames} | *training step* | {step * 1e3:.0f} | 1 |")
        for name in list_maskers():
            if name == "none":
                continue
            masker = masker_for(name)
            gen = torch.Generator().manual_seed(0)
            sec = timed(lambda: masker(tokens, attn=attn, generator=gen), repeat=5)
            print(f"  {name}: {sec * 1e3:.1f} ms ({sec / step:.4f} of a step)", flush=True)
            lines.append(f"| {frames} | `{name}` | {sec * 1e3:.1f} | {sec / step:.4f} |")
            if name == "clusterstm":
                share[frames] = sec / step
        sec = timed(lambda: gram_floor(tokens), repeat=5)
        print(f"  Gram floor: {sec * 1e3:.1f} ms ({sec / step:.4f} of a step)", flush=True)
        lines.append(f"| {frames} | *Gram floor: the upper block triangles' products alone* | {sec * 1e3:.1f} "
                     f"| {sec / step:.4f} |")
        floor[frames] = sec / step

        fast_keep = clusterstm_keep(tokens, RATIO)[0]
        ref_keep = reference_clusterstm(tokens, RATIO, DEFAULT_DC_RATIO)
        differ = int((fast_keep != ref_keep).sum())
        print(f"  clusterstm vs reference: {differ} tokens differ", flush=True)
        assert differ == 0, f"clusterstm and the reference disagree on {differ} tokens at T={frames}"
        # interleaved, so both see the same load; best of 5 each
        runs = [
            (once(lambda: reference_clusterstm(tokens, RATIO, DEFAULT_DC_RATIO)), once(lambda: clusterstm_keep(tokens, RATIO)))
            for _ in range(5)
        ]
        t_ref, t_fast = min(r for r, _ in runs), min(f for _, f in runs)
        print(f"  reference {t_ref:.2f} s, vidmask {t_fast:.3f} s: {t_ref / t_fast:.1f}x", flush=True)
        compare.append((frames, t_ref, t_fast))

    lines += [
        "",
        "## `clusterstm` vs the corrected pseudocode (Algorithms I + II transcribed, `reference_clusterstm`)",
        "",
        "Same inputs, same run; masks asserted identical.",
        "",
        "| T | reference (s) | vidmask (s) | speed-up | same masks | peak extra memory, reference (MiB) | peak extra memory, vidmask (MiB) | by hand: reference / vidmask (MiB) |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for frames, t_ref, t_fast in compare:
        mem_ref = mem_fast = float("nan")
        if frames == 16:
            mem_fast = peak_extra_mib("fast", frames)
            mem_ref = peak_extra_mib("reference", frames)
            print(f"  peak extra memory T={frames}: reference {mem_ref:.0f} MiB, vidmask {mem_fast:.0f} MiB", flush=True)
            assert mem_fast <= 128, f"clusterstm used {mem_fast:.0f} MiB extra at T={frames}"
            memory[frames] = mem_fast
        by_fast, by_ref = analytic_mib(frames)
        fmt = lambda v: "-" if math.isnan(v) else f"{v:.0f}"  # noqa: E731
        lines.append(
            f"| {frames} | {t_ref:.2f} | {t_fast:.3f} | {t_ref / t_fast:.1f}x | yes | {fmt(mem_ref)} | {fmt(mem_fast)} "
            f"| {by_ref:.0f} / {by_fast:.0f} |"
        )
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    lines += [
        "",
        "Targets: `clusterstm` no slower than the record issue 16 quotes (0.030 of a step at T=8, 0.049 at "
        "T=16, on 2026-11-22 when the step took 4.1 s and 8.6 s: a ratio moves with the machine, since the "
        "masker's share of memory-bound work differs from the step's): " + ", ".join(f"T={t} {v:.3f} ({verdict(v <= {8: 0.030, 16: 0.049}.get(t, 0.05))})"
                              for t, v in share.items())
        + "; 0.03 at T=16: " + ", ".join(f"{v:.3f} ({verdict(v <= 0.03)}; the Gram products alone take "
                                        f"{floor[t]:.3f})" for t, v in share.items() if t == 16)
        + "; at least 4x faster than the reference: "
        + ", ".join(f"T={t} {r / f:.1f}x ({verdict(r / f >= 4)})" for t, r, f in compare)
        + "; peak extra memory at most 128 MiB at T=16: "
        + ", ".join(f"{m:.0f} MiB ({verdict(m <= 128)})" for m in memory.values())
        + ".",
    ]
    lines += [
        "",
        "The Gram floor rows time only the multiply-adds of an exact float32 method: each clip's upper "
        "block triangle of its Gram matrix (T(T+1)/2 blocks of N x N x C), the loop's own products, without "
        "the quantile, the exp-sum, DPC or the selection. The step grows with T and the Gram with T^2. "
        + (f"At T=16 the products alone take {floor[16]:.3f} of the step, " if 16 in floor else "")
        + ("at least 0.9 of the 0.03 target: the target is out of reach on this CPU for any method that "
           "gives these masks (they are decided by float32 Gram entries), whatever the rest costs."
           if floor.get(16, 0.0) >= 0.027 else
           "below 0.9 of the 0.03 target: the rest of the method (quantile, exp-sum, DPC, selection) "
           "is what stands between it and the target."),
        "",
        "Peak extra memory (T=16 only): in a fresh subprocess, with the input made and a warm-up call "
        "on a tiny clip done, the peak resident set is reset (`/proc/self/clear_refs`), the call runs, "
        "and the rise of `VmHWM` over the resident set before the call is reported. By hand: the largest "
        "intermediates alive at once (vidmask: for each of the two clips in flight, its upper block triangle "
        "of the Gram matrix, its normalised tokens, one 8 MiB chunk of similarity rows and its comparison "
        "mask; reference: the "
        "[B*T, (T-1)*N, C] token copy, the [B*T, N, (T-1)*N] distances and two same-sized temporaries "
        "for the sort and the exp).",
        "",
    ]
    print("batched path vs loop", flush=True)
    lines += impl_section(sync_batch)
    lines += [
        "",
        f"Total bench time: {time.perf_counter() - started:.0f} s; load average at the end {load()}.",
        "",
    ]
    out = ROOT / "bench" / "results" / "masking.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-child", choices=["fast", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--sync-batch", type=int, default=64, help="batch size of the op / host-sync count")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.frames)
    else:
        main(args.sync_batch)
