"""SST-2 (GLUE tsv: ``sentence<TAB>label`` with a header) and MeZO-style few-shot sampling."""
from __future__ import annotations

import random
from pathlib import Path

import torch

from zosci.errors import ConfigError

SPLITS = ("train", "dev", "test")


def load_sst2(root, split: str) -> list[tuple[str, int]]:
    """[(sentence, label)] of one split; label 0 = negative, 1 = positive."""
    if split not in SPLITS:
        raise ConfigError(f"split: unknown {split!r}; choose one of {list(SPLITS)}")
    path = Path(root) / f"{split}.tsv"
    if not path.is_file():
        raise ConfigError(f"data.root: {str(path)!r} not found; point data.root at the folder holding the GLUE "
                          f"SST-2 train.tsv/dev.tsv/test.tsv (sentence<TAB>label with a header line)")
    rows = []
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:2] != ["sentence", "label"]:
            raise ConfigError(f"data.root: {path} must start with the header 'sentence<TAB>label', got {header}")
        for n, line in enumerate(f, start=2):
            if not line.strip():
                continue
            sentence, _, label = line.rstrip("\n").rpartition("\t")
            if label not in ("0", "1"):
                raise ConfigError(f"data.root: {path} line {n}: label must be 0 or 1, got {label!r}")
            rows.append((sentence, int(label)))
    return rows


def few_shot(examples, k: int, seed: int = 0) -> list[tuple[str, int]]:
    """k examples per class, drawn without replacement with random.Random(seed), then shuffled (MeZO's k-shot)."""
    rng = random.Random(seed)
    by_label: dict[int, list] = {}
    for ex in examples:
        by_label.setdefault(ex[1], []).append(ex)
    picked = []
    for label in sorted(by_label):
        pool = by_label[label]
        if len(pool) < k:
            raise ConfigError(f"data.k: {k} per class but class {label} has only {len(pool)} examples; lower k")
        picked += rng.sample(pool, k)
    rng.shuffle(picked)
    return picked


class Batches:
    """Seeded epochs of shuffled minibatches over examples; state() / set_state() for resume."""

    def __init__(self, examples, batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")
        self.examples, self.batch_size = list(examples), min(batch_size, len(examples))
        self.rng = random.Random(seed)
        self.order, self.pos = [], 0

    def next(self) -> tuple[list[str], torch.Tensor]:
        if self.pos + self.batch_size > len(self.order):
            self.order = list(range(len(self.examples)))
            self.rng.shuffle(self.order)
            self.pos = 0
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return [self.examples[i][0] for i in idx], torch.tensor([self.examples[i][1] for i in idx])

    def state(self) -> dict:
        return {"rng": self.rng.getstate(), "order": list(self.order), "pos": self.pos}

    def set_state(self, state: dict) -> None:
        self.rng.setstate(_as_tuple(state["rng"]))
        self.order, self.pos = list(state["order"]), int(state["pos"])


def _as_tuple(x):
    return tuple(_as_tuple(y) for y in x) if isinstance(x, (list, tuple)) else x
