"""The GPU check: one script that measures what the CPU bench cannot, and writes bench/results/gpu.md.

    python bench/gpu_check.py                       # on a GPU: the papers' scale, under 8 minutes
    python bench/gpu_check.py --device cpu --tiny   # anywhere: the same sections at toy scale (the suite runs it)

Sections:
1. every ``configs/recipes/base/*`` recipe at batch 64, 8 frames of 224 px, bf16
   (``--precision``; ``--tiny``: batch 4, 2 frames of 32 px, a 2-block model): ms per training
   step (median), peak accelerator memory, and the masker's time as a share of
   the step (the mask is computed inside the step; its time is measured
   separately on the same inputs, synchronised), and the reads from the
   device to the host in one step (each a sync; counted by dispatch mode,
   with the lines they come from: on a CPU the reference AdamW reads every
   parameter's step count, the GPU's fused one does not);
2. bf16 against fp32: the first step's loss of the same recipe and batch;
3. ``clusterstm`` masks computed on the CPU against the device (must be equal);
4. a CLI smoke run on a generated tiny set: pretrain, SIGKILL after a
   checkpoint, ``--resume``, the same losses as an uninterrupted run.

Synthetic clips and captions; the teacher is lit-effnet with untrained heads
(``teacher.path=''``: the head weights do not change the cost). The hf-clip
recipes take ``--clip FOLDER`` (a local CLIPModel); without it they are
switched to lit-effnet (its one map as every aligned layer's target, and
``stm`` decoding one layer), since no CLIP folder can be assumed on the
machine. ``--tiny`` runs ``stm`` at 64 px: its alignment network needs a grid
side of at least 4 patches.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.size=32", "data.num_frames=2", "model.dim=32", "model.depth=2", "model.heads=2",
        "model.embed_dim=16", "model.text.init=random"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recipe_config(path: Path, tiny: bool, precision: str, clip: str = ""):
    """A base recipe at the check's scale. hf-clip recipes use the CLIP folder ``clip`` when given, else
    lit-effnet with untrained heads, whose one token map every aligned layer then targets."""
    from vidmask.config import load_config
    from vidmask.masking import masker_class

    over = ["teacher.cache=", f"train.precision={precision}"]
    over += (TINY + ["train.batch_size=4", "loss.align.layers=1", "loss.stm.layers=1"] if tiny
             else ["train.batch_size=64"])
    # the base recipes require teacher.path with hf-clip: a stand-in to read the file, replaced below
    cfg = load_config(path, over + [f"teacher.path={clip or 'unset'}"])
    if tiny and masker_class(cfg.mask.strategy).needs_grid:
        over.append("data.size=64")  # stm pools its patch grid twice by 2: a side of at least 4 patches
    if cfg.teacher.name == "hf-clip":
        # lit-effnet has one map: every aligned layer targets it, and stm decodes one layer
        over += [f"teacher.path={clip}"] if clip else ["teacher.name=lit-effnet", "teacher.path=",
                                                       "loss.align.targets=last", "loss.stm.layers=1"]
    else:
        over.append("teacher.path=")
    return load_config(path, over)


def build(cfg, device: torch.device):
    from vidmask.train.optim import param_groups
    from vidmask.train.wiring import build_model, build_task, build_teacher_from

    torch.manual_seed(0)
    teacher = build_teacher_from(cfg)  # as pretraining holds it: hf-clip's weights in the autocast dtype
    task = build_task(cfg, build_model(cfg), teacher).to(device)
    opt = torch.optim.AdamW(param_groups(task, 0.05), lr=1e-4, fused=device.type == "cuda")
    B, T, S = cfg.train.batch_size, cfg.data.num_frames, cfg.data.size
    g = torch.Generator().manual_seed(0)
    batch = {"video": torch.randn(B, T, 3, S, S, generator=g).to(device),
             "caption": [f"a small red circle number {i} moves left" for i in range(B)]}
    for tower in task.frozen_caption_towers():  # the captions' features held, as training warms them
        tower.warm_cache(batch["caption"])
    return task, opt, batch


def step(task, opt, batch, cfg, device, i: int) -> torch.Tensor:
    from vidmask.train.engine import autocast_ctx

    with autocast_ctx(device, cfg.train.precision):
        losses, _ = task(batch, torch.Generator(device=device).manual_seed(i))
    loss = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()  # () on the device: read it when needed, the step itself reads nothing


def time_recipe(path: Path, tiny: bool, device: torch.device, steps: int, clip: str,
                precision: str = "bf16") -> list:
    cfg = recipe_config(path, tiny, precision, clip)
    task, opt, batch = build(cfg, device)
    for i in range(2):  # warm-up (allocator, kernels)
        step(task, opt, batch, cfg, device, i)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(steps):
        sync(device)
        t0 = time.perf_counter()
        step(task, opt, batch, cfg, device, i)
        sync(device)
        times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    mask_times = []
    with torch.no_grad():
        t_out = task.run_teacher(batch)
        for i in range(steps):
            sync(device)
            t0 = time.perf_counter()
            task.choose_tokens(batch["video"], torch.Generator(device=device).manual_seed(i), t_out)
            sync(device)
            mask_times.append(time.perf_counter() - t0)
    mask_s = sorted(mask_times)[len(mask_times) // 2]
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else "n/a (CPU)"
    return [f"`{path.stem}`", cfg.mask.strategy, f"{step_s * 1000:.0f}", peak, f"{mask_s / step_s:.3f}",
            host_reads(task, opt, batch, cfg, device)]


def host_reads(task, opt, batch, cfg, device) -> str:
    """The reads from the device to the host in one training step (each a sync on an accelerator),
    counted with bench/masking.py's dispatch-mode counter, and where the first ones come from."""
    import traceback

    from masking import OpLog

    class Where(OpLog):
        def __init__(self):
            super().__init__()
            self.sites: dict[str, int] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            before = self.syncs
            out = super().__torch_dispatch__(func, types, args, kwargs)
            if self.syncs > before:
                frames = [f for f in traceback.extract_stack() if "site-packages" not in f.filename
                          and f.name != "__torch_dispatch__"]  # the last line of vidmask's or this script's
                site = f"{Path(frames[-1].filename).relative_to(ROOT)}:{frames[-1].lineno}" if frames else "?"
                self.sites[site] = self.sites.get(site, 0) + 1
            return out

    with Where() as log:
        step(task, opt, batch, cfg, device, 99)
    sites = ", ".join(f"{k} x{v}" for k, v in sorted(log.sites.items(), key=lambda kv: -kv[1])[:3])
    return f"{log.syncs}" + (f" ({sites})" if sites else "")


def bf16_vs_fp32(path: Path, tiny: bool, device: torch.device, clip: str) -> list:
    out = []
    for precision in ("fp32", "bf16"):
        with tf32(device, precision != "fp32"):  # the fp32 row in true float32, not TF32
            cfg = recipe_config(path, tiny, precision, clip)
            task, opt, batch = build(cfg, device)
            out.append(float(step(task, opt, batch, cfg, device, 0)))
    return [f"`{path.stem}`", f"{out[0]:.4f}", f"{out[1]:.4f}", f"{abs(out[1] - out[0]) / abs(out[0]):.2%}"]


@contextlib.contextmanager
def tf32(device: torch.device, on: bool):
    """TF32 matmuls and convolutions on or off while the block runs (CUDA; nothing elsewhere)."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def clusterstm_cpu_vs_device(tiny: bool, device: torch.device) -> list:
    from vidmask.masking import build_masker

    B, T, N, C = (2, 4, 16, 32) if tiny else (8, 8, 196, 768)
    tokens = torch.randn(B, T, N, C, generator=torch.Generator().manual_seed(0))
    masker = build_masker("clusterstm", ratio=0.85)
    cpu = masker(tokens).keep
    dev = masker(tokens.to(device)).keep.cpu()
    return [f"B={B}, T={T}, N={N}, C={C}", str(device), "yes" if torch.equal(cpu, dev) else
            f"NO: {int((cpu != dev).sum())} of {cpu.numel()} tokens differ"]


def _cli(args: list[str], env: dict) -> None:
    """Run ``vidmask ARGS``; on failure raise with the end of its output (the report shows it)."""
    p = subprocess.run([sys.executable, "-m", "vidmask", *args], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"`vidmask {' '.join(args[:2])}` exited with {p.returncode}: {(p.stdout + p.stderr)[-2000:]}")


def smoke_kill_resume(device: torch.device) -> list:
    """pretrain on a tiny generated corpus (vidmask's own generator), SIGKILL after a checkpoint,
    ``--resume``: the losses of every step against an uninterrupted run. On CUDA the default kernels
    are not bit-deterministic (atomics in some backward passes), so losses agree to a relative 1e-3
    there, to 1e-6 on CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "set"
        _cli(["corpus", "make", "--out", str(data), "--videos", "24", "--frames", "8", "--size", "32",
              "--workers", "1", "--quiet"], env)
        common = ["pretrain", f"data.corpus={data}", *TINY, "data.num_workers=0", "data.test_anno=",
                  "train.batch_size=4", "train.steps=12", "train.ckpt_every=2", "train.log_every=1",
                  f"train.device={device.type}"]
        full, killed = Path(tmp) / "full", Path(tmp) / "killed"
        _cli([*common, f"run_dir={full}"], env)
        proc = subprocess.Popen([sys.executable, "-m", "vidmask", *common, f"run_dir={killed}"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        pointer = killed / "checkpoints" / "latest"
        deadline = time.time() + 300
        while not pointer.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:  # still running (it may have ended, or failed, before a checkpoint)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        at = pointer.read_text().strip() if pointer.exists() else "none"
        _cli(["pretrain", "--resume", str(killed)], env)
        a, b = (_losses(p.joinpath("metrics.csv").read_text().splitlines()) for p in (full, killed))
    tol = 1e-3 if device.type == "cuda" else 1e-6
    worst = max((abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in a.keys() & b.keys()), default=float("inf"))
    same = a.keys() == b.keys() and worst <= tol
    verdict = f"yes (largest relative difference {worst:.1e})" if same else (
        f"NO: steps {sorted(a.keys() ^ b.keys())} in one run only" if a.keys() != b.keys()
        else f"NO: largest relative difference {worst:.1e} > {tol:.0e}")
    return ["pretrain, SIGKILL, --resume", f"killed after {at}", verdict]


def _losses(lines: list[str]) -> dict:
    head = lines[0].split(",")
    i, j = head.index("step"), head.index("loss")
    return {r.split(",")[i]: float(r.split(",")[j]) for r in lines[1:] if r.split(",")[j]}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (what the test suite runs)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per recipe (median)")
    ap.add_argument("--recipes", nargs="*", help="base recipe names to check (default: every one)")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"],
                    help="the timed steps' precision (section 1; section 2 runs both). fp32 on a CPU that "
                         "emulates bf16: there a bf16 step of the lit-effnet teacher takes minutes")
    ap.add_argument("--clip", default="", help="a local CLIPModel folder for the hf-clip recipes (else lit-effnet)")
    ap.add_argument("--out", default="gpu.md", help="file name under bench/results/, or a path elsewhere")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    recipes = sorted((ROOT / "configs" / "recipes" / "base").glob("*.yaml"))
    if args.recipes:
        recipes = [p for p in recipes if p.stem in args.recipes]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    scale = ("tiny: batch 4, 2 frames of 32 px, a 2-block model" if args.tiny
             else "batch 64, 8 frames of 224 px, ViT-B/16") + f"; timed steps in {args.precision}"
    teacher = f"hf-clip from {args.clip}" if args.clip else "lit-effnet with untrained heads for every recipe"
    head = (f"Device: {name}; {scale}; median of {args.steps} steps after 2 warm-up steps; synthetic clips; "
            f"teacher: {teacher}.")
    sections = [  # (title, columns, rows of one section: one list per row)
        ("Training step per recipe", ["recipe", "mask", "ms / step", "peak memory", "masker share of the step",
                                      "host reads / step (where)"],
         lambda p: [time_recipe(p, args.tiny, device, args.steps, args.clip, args.precision)], recipes),
        ("First-step loss, fp32 against bf16", ["recipe", "fp32", "bf16", "relative difference"],
         lambda p: [bf16_vs_fp32(p, args.tiny, device, args.clip)], recipes),
        ("clusterstm masks, CPU against the device", ["tokens", "device", "identical"],
         lambda _: [clusterstm_cpu_vs_device(args.tiny, device)], [None]),
        ("CLI smoke run", ["run", "kill", "same losses after --resume"], lambda _: [smoke_kill_resume(device)], [None]),
    ]
    done: list[str] = []
    path = None
    for title, columns, run, units in sections:
        rows, failures = [], []
        for unit in units:  # a failure is written down and the check goes on: one error loses one row
            try:
                rows += run(unit)
            except Exception as e:  # noqa: BLE001 - reported in the file, with what failed
                what = f"`{unit.stem}`: " if isinstance(unit, Path) else ""
                failures.append(f"- FAILED {what}{type(e).__name__}: {str(e)[-1500:]}")
                print(f"gpu_check: {title}: {what}{type(e).__name__}: {e}", file=sys.stderr, flush=True)
        part = f"## {title}\n\n" + (table(columns, rows) if rows else "(no row)")
        done.append(part + ("\n\n" + "\n".join(failures) if failures else ""))
        path = _write(args.out, head, done, pending=[t for t, *_ in sections[len(done):]])
    return path


def _write(out: str, head: str, done: list[str], pending: list[str]) -> Path:
    """The report so far: written after every section, so an error or a kill later loses nothing."""
    body = head + "\n\n" + "\n\n".join(done)
    if pending:
        body += "\n\n(still running: " + ", ".join(pending) + ")"
    if os.sep in out:  # a path elsewhere (the suite's run): leave bench/results/ alone
        path = Path(out)
        path.write_text(f"# GPU check\n\n{body}\n")
        return path
    return write(out, "GPU check", body)

if __name__ == "__main__":
    main()
