"""Finished bench runs kept in the repository: a run folder lives on one machine, its figures travel with the code.

A leaderboard is many hours of runs, spread over sessions and machines, and ``runs/`` is not committed: a fresh
clone has none of the run folders an earlier session finished. So each finished run's figures go into
``bench/results/NAME-runs.json``, keyed by run name and stored with the setup they were run under (steps,
losses, overrides, a digest of the corpus's annotations). A later call with the same setup takes the figures
from there instead of training again; a record made under another setup is never mixed in, and is named.
A recipe or config file is part of the setup by the digest of its parsed content (comments may change); a
change of code is not caught: name the leaderboard anew (``--name``) when one changes what a recipe does.
The file is rewritten whole (write, then rename) after every run, so a kill never leaves it half written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

# the files that fix what a corpus is: its training captions and every test caption (the queries)
CORPUS_FILES = ("train.json", "test_retrieval_all.json")


def corpus_digest(corpus: str | Path) -> str:
    """12 hex digits of sha256 over the corpus's training and test annotation files."""
    h = hashlib.sha256()
    for name in CORPUS_FILES:
        path = Path(corpus) / name
        if not path.is_file():
            raise SystemExit(f"{path}: not found; make the corpus first (vidmask corpus make --out {corpus})")
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def file_digest(path: str | Path) -> str:
    """12 hex digits of sha256 over a file (a teacher's weights: which teacher a run distilled)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def config_digest(*paths: str | Path) -> str:
    """12 hex digits of sha256 over config files' settings (their parsed YAML with the ``base:`` files they
    extend merged in; not their comments or layout)."""
    from vidmask.config import config_tree

    h = hashlib.sha256()
    for path in paths:
        h.update(json.dumps(config_tree(path), sort_keys=True).encode())
    return h.hexdigest()[:12]


class Ledger:
    """``{run name: {"setup": {...}, "figures": {...}, "finished": date, ...}}`` in one JSON file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.records: dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except json.JSONDecodeError as e:
            raise SystemExit(f"{self.path}: not valid JSON ({e}); restore it from git (git checkout -- {self.path})")

    def get(self, name: str, setup: dict) -> dict | None:
        """The figures of run ``name`` when they were made under ``setup``; None otherwise."""
        rec = self.records.get(name)
        return rec["figures"] if rec and rec["setup"] == setup else None

    def other_setup(self, name: str, setup: dict) -> bool:
        """True when ``name`` is recorded, but under another setup (its figures are not used)."""
        return name in self.records and self.records[name]["setup"] != setup

    def put(self, name: str, setup: dict, figures: dict, **extra) -> None:
        """Record run ``name`` (replacing an older record) and rewrite the file atomically. The file is read
        again under a lock first, so two benches writing one ledger (two seeds run side by side) keep each
        other's records."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".json.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if self.path.is_file():
                self.records = {**self.records, **json.loads(self.path.read_text())}
            record = {"setup": setup, "figures": figures, **extra}
            old = self.records.get(name, {})
            # a run read back again (its folder still here) keeps the day it finished
            same = old and {k: v for k, v in old.items() if k != "finished"} == json.loads(json.dumps(record))
            record["finished"] = old["finished"] if same else time.strftime("%Y-%m-%d")
            self.records[name] = record
            tmp = self.path.with_suffix(f".json.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.records, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
