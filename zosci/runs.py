"""Run folders: config copy, metrics.csv, run.log, checkpoints, plots; resume.

    <output>/<name>-<YYYYmmdd-HHMMSS>/
        config.toml        verbatim copy of the case file
        metrics.csv        one row per log_metrics call (header from the first row)
        run.log            the "zosci" logger while the run is open
        checkpoints/last.pt
        *.png

Resuming drops the metrics rows logged after the last checkpoint, so a resumed
run's metrics.csv equals an uninterrupted one's when the case is deterministic.
Setting ZOSCI_KILL_AT_STEP=k makes the process exit abruptly (os._exit(137))
right after the first metrics row with step >= k: a stand-in for a kill, for tests.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import sys
import time
from pathlib import Path

import torch

from .errors import ConfigError

CONFIG, METRICS, LOG, CHECKPOINTS = "config.toml", "metrics.csv", "run.log", "checkpoints"
KILL_ENV = "ZOSCI_KILL_AT_STEP"


class Run:
    """An open run folder. Use Run.create or Run.open, then ``with run: ...`` (closes the log)."""

    def __init__(self, path: Path, config: dict, resumed: bool):
        self.path, self.config, self.resumed = Path(path), config, resumed
        self.logger = logging.getLogger("zosci")
        self.checkpoint_step = None
        self._header = None
        ckpt = self.path / CHECKPOINTS / "last.pt"
        if ckpt.exists():
            self.checkpoint_step = int(torch.load(ckpt, mmap=True, weights_only=False)["step"])
        self._handlers = []
        self._open_log()

    # creation ----------------------------------------------------------------
    @classmethod
    def create(cls, config: dict, case_text: str, output_dir=None) -> "Run":
        """A new run folder <output_dir>/<name>-<YYYYmmdd-HHMMSS>[-k] (output_dir defaults to config["output"])."""
        root = Path(config.get("output", "runs") if output_dir is None else output_dir)
        root.mkdir(parents=True, exist_ok=True)
        base = f"{config['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
        for k in range(1000):
            path = root / (base if k == 0 else f"{base}-{k}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise RuntimeError(f"could not create a unique run folder under {root}")
        (path / CONFIG).write_text(case_text)
        (path / METRICS).touch()
        (path / CHECKPOINTS).mkdir()
        return cls(path, config, resumed=False)

    @classmethod
    def open(cls, path) -> "Run":
        """Reopen a run folder to resume it: re-validates config.toml, trims metrics after the checkpoint."""
        from .cases import load_case

        path = Path(path)
        if not (path / CONFIG).is_file():
            raise ConfigError(f"{path}: not a run folder (no {CONFIG}); give the folder printed by `zosci run`")
        _, config, _ = load_case(path / CONFIG)
        (path / CHECKPOINTS).mkdir(exist_ok=True)
        run = cls(path, config, resumed=True)
        run._trim_metrics(run.checkpoint_step or 0)
        return run

    # logging -----------------------------------------------------------------
    def _open_log(self):
        file = logging.FileHandler(self.path / LOG)
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(message)s"))
        for h in (file, console):
            self.logger.addHandler(h)
            self._handlers.append(h)
        if self.logger.level == logging.NOTSET or self.logger.level > logging.INFO:
            self.logger.setLevel(logging.INFO)
        # the run prints its own log; a root handler installed by a library (FFCx's JIT does) would repeat it
        self._propagate, self.logger.propagate = self.logger.propagate, False

    def close(self):
        """Detach and close this run's log handlers."""
        for h in self._handlers:
            self.logger.removeHandler(h)
            h.close()
        if self._handlers:
            self.logger.propagate = self._propagate
        self._handlers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # metrics -----------------------------------------------------------------
    def log_metrics(self, step: int, **values):
        """Append a row (step, *values) to metrics.csv; None is written as an empty cell."""
        file = self.path / METRICS
        if self._header is None:
            self._header = _read_header(file)
        row = {"step": int(step), **values}
        if self._header is None:
            self._header = list(row)
            _append(file, self._header)
        extra = [k for k in row if k not in self._header]
        if extra:
            raise ValueError(f"metrics {extra} are not in metrics.csv's header {self._header}; "
                             f"log every column in the first row (None for blanks)")
        _append(file, ["" if row.get(k) is None else row.get(k) for k in self._header])
        kill = os.environ.get(KILL_ENV)
        if kill and int(step) >= int(kill):
            os._exit(137)

    def read_metrics(self) -> list[dict]:
        """The rows of metrics.csv as dicts of strings."""
        with open(self.path / METRICS, newline="") as f:
            return list(csv.DictReader(f))

    def _trim_metrics(self, step: int):
        file = self.path / METRICS
        with open(file, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        buf = io.StringIO()
        csv.writer(buf).writerows(kept)
        tmp = file.with_suffix(".csv.tmp")
        tmp.write_text(buf.getvalue())
        os.replace(tmp, file)

    # checkpoints -------------------------------------------------------------
    def save_checkpoint(self, state: dict, step: int):
        """Atomically write checkpoints/last.pt (tmp file + os.replace) and record the step."""
        target = self.path / CHECKPOINTS / "last.pt"
        tmp = target.with_suffix(".pt.tmp")
        with open(tmp, "wb") as f:
            torch.save({"step": int(step), "state": state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        self.checkpoint_step = int(step)

    def load_checkpoint(self) -> dict | None:
        """The state of the last checkpoint, or None."""
        target = self.path / CHECKPOINTS / "last.pt"
        if not target.exists():
            return None
        return torch.load(target, weights_only=False)["state"]

    # progress and plots ------------------------------------------------------
    def progress(self, total: int, initial: int = 0, desc: str = ""):
        """A tqdm bar on stderr."""
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True)

    def plot_path(self, name: str) -> Path:
        return self.path / f"{name}.png"

    def __repr__(self):
        return f"Run({str(self.path)!r}, resumed={self.resumed})"


def _read_header(file: Path):
    if not file.exists() or file.stat().st_size == 0:
        return None
    with open(file, newline="") as f:
        return next(csv.reader(f), None)


def _append(file: Path, cells: list):
    buf = io.StringIO()
    csv.writer(buf).writerow([repr(c) if isinstance(c, float) else c for c in cells])
    with open(file, "a", newline="") as f:
        f.write(buf.getvalue())


__all__ = ["Run"]
