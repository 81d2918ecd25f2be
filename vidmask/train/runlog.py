"""What a run writes for people: metrics.csv, TensorBoard events, a loss curve, a log file."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("vidmask")


def setup_logging(run_dir: Path | None, main: bool) -> None:
    """Console + RUN/log.txt on rank 0; warnings only elsewhere."""
    root = logging.getLogger("vidmask")
    root.handlers.clear()
    root.setLevel(logging.INFO if main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    root.addHandler(console)
    if run_dir is not None and main:
        fh = logging.FileHandler(run_dir / "log.txt")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    root.propagate = False


def git_revision() -> dict:
    """The code's git revision (and whether the tree had local changes)."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode == 0:
            return {"commit": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"commit": "unknown", "dirty": None}


class MetricsWriter:
    """Appends rows to RUN/metrics.csv and TensorBoard; draws RUN/loss.png."""

    def __init__(self, run_dir: Path, resume_step: int = 0):
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / "metrics.csv"
        self.fields: list[str] | None = None
        if self.csv_path.is_file():
            # a resumed run drops rows past its checkpoint, so the curve has no repeats
            with self.csv_path.open() as f:
                rows = list(csv.DictReader(f))
            if rows:
                self.fields = list(rows[0].keys())
                kept = [r for r in rows if int(float(r["step"])) <= resume_step]
                with self.csv_path.open("w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=self.fields)
                    w.writeheader()
                    w.writerows(kept)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
        except Exception as e:  # tensorboard is optional at run time
            log.warning("TensorBoard disabled: %s", e)

    def write(self, step: int, values: dict[str, float]) -> None:
        """One row; a row with columns the file does not have yet (the first evaluation's metrics after
        the training rows) widens the file's header, the earlier rows blank in them."""
        row = {"step": step, **{k: round(float(v), 6) for k, v in values.items()}}
        if self.fields is None:
            self.fields = list(row.keys())
            with self.csv_path.open("w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields).writeheader()
        elif any(k not in self.fields for k in row):
            with self.csv_path.open() as f:
                rows = list(csv.DictReader(f))
            self.fields += [k for k in row if k not in self.fields]
            tmp = self.csv_path.with_suffix(".csv.tmp")
            with tmp.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields)
                w.writeheader()
                w.writerows(rows)
            tmp.replace(self.csv_path)  # never a half-written metrics.csv
        with self.csv_path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, float(v), step)

    def plot(self) -> Path | None:
        """RUN/loss.png from metrics.csv; None when there is nothing to draw. A drawing never stops a run
        (and rank 0 alone draws, so an error here would leave the others waiting): failures are logged."""
        try:
            return self._plot()
        except Exception as e:  # noqa: BLE001 - a figure is not worth a run
            log.warning("loss.png not drawn: %s: %s", type(e).__name__, e)
            return None

    def _plot(self) -> Path | None:
        if not self.csv_path.is_file():
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with self.csv_path.open() as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return None
        keys = [k for k in rows[0] if k.endswith("_loss") or k == "loss"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for k in keys:
            have = [r for r in rows if r.get(k)]  # evaluation rows have no loss
            ax.plot([int(float(r["step"])) for r in have], [float(r[k]) for r in have], label=k)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = self.run_dir / "loss.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def write_json(path: Path, data) -> None:
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
