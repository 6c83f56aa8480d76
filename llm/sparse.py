"""Perturb and update only the embedding rows a batch reads (MeZO's sparse_embeddings).

The loss of a batch reads the rows E[ids] of the input embedding matrix E and
no other; its gradient on every other row is exactly zero, so a direction's
noise there only adds variance (E||g||^2 = d ||grad||^2 for Rademacher v: d
counts every perturbed value). ``UsedRows`` exposes R = E[ids] as one small
dense tensor: while a batch is selected, a forward pre-hook writes R into
E[ids] before every forward, so moving R in place moves those rows of E. The
optimizer perturbs R with the same seed trick as any tensor; the ZO estimate
on the rows used is then the one of the dense direction restricted to them
(its delta does not depend on the other rows' noise), and the step record
adds the ids, which a replay needs to rebuild R.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from zosci.errors import ConfigError
from zosci.optim import ZOSGD


class UsedRows:
    """R = E[ids], the rows of an nn.Embedding that the selected batch reads."""

    def __init__(self, embedding: nn.Embedding):
        self.embedding = embedding
        self.rows = nn.Parameter(embedding.weight.new_empty(0, embedding.embedding_dim), requires_grad=False)
        self.ids = None
        embedding.register_forward_pre_hook(self._write)

    def _write(self, module, args):
        if self.ids is not None:
            module.weight.index_copy_(0, self.ids, self.rows.data)

    @contextmanager
    def select(self, input_ids):
        """Within the block, rows = E[unique(input_ids)]; on exit they are written back to E."""
        if self.ids is not None:
            raise RuntimeError("UsedRows.select: a batch is already selected")
        weight = self.embedding.weight
        self.ids = torch.unique(torch.as_tensor(input_ids, device=weight.device))
        self.rows.data = weight[self.ids]
        try:
            yield self.ids
        finally:
            weight.index_copy_(0, self.ids, self.rows.data)
            self.ids = None
            self.rows.data = weight.new_empty(0, weight.shape[1])


def tied_input_embeddings(hf: nn.Module) -> bool:
    """Whether the input embedding matrix is also read by the output head (then every row is used)."""
    out = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    emb = hf.get_input_embeddings()
    return out is not None and out.weight.untyped_storage().data_ptr() == emb.weight.untyped_storage().data_ptr()


class SparseZOSGD(ZOSGD):
    """ZOSGD whose direction covers, of the input embeddings, only the rows the closure reads.

    ``step(closure)`` needs ``closure.input_ids`` (llm.closure_for sets it);
    ``last_record`` = (seed, [(query, delta)], ids), replayed by apply_record."""

    def __init__(self, params, used: UsedRows, **kwargs):
        super().__init__(list(params) + [used.rows], **kwargs)
        if self.sampler.needs_guide or any(g["momentum"] for g in self.param_groups):
            raise ConfigError("sparse_embeddings: the rows change from step to step, so no per-row state "
                              "(momentum, a DAP guide) can be kept; set sparse_embeddings=False for these")
        self.used = used

    @torch.no_grad()
    def step(self, closure):
        ids = getattr(closure, "input_ids", None)
        if ids is None:
            raise ConfigError("closure: sparse_embeddings needs closure.input_ids, the token ids the closure's "
                              "forward reads (llm.closure_for sets it); or set sparse_embeddings=False")
        with self.used.select(ids) as used_ids:
            loss = super().step(closure)
            self.last_record = (*self.last_record[:2], used_ids.tolist())
        return loss

    @torch.no_grad()
    def apply_record(self, record) -> None:
        seed, kept, ids = record
        with self.used.select(torch.tensor(ids, dtype=torch.long)):
            self._apply((seed, kept))
