"""Gradient audit: how close is the ZO vector-Jacobian product to the truth?

For a black box y = fn(x) and a fixed cotangent ybar, compares the BlackBox
estimate of ybar^T J with a reference (autograd when fn is a differentiable
torch function, central differences otherwise), over ``trials`` independent
estimates per number of queries. Theory for a smooth fn and small mu: the
squared relative error of a q-query estimate is c/q, with c = d + 1 for
Gaussian directions and d - 1 for sphere, Rademacher, coordinate and ideal
DAP (Ma & Huang, ICLR 2025), so cosine ~ 1 / sqrt(1 + c/q).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .hybrid import BlackBox, _as_tensor

VARIANCE_FACTOR = {"gaussian": 1, "sphere": -1, "rademacher": -1, "coordinate": -1, "dap": -1}


@dataclass
class AuditRow:
    queries: int
    cosine: float
    cosine_std: float
    rel_error: float        # root mean squared relative error over the trials
    mean_sq_rel_error: float
    se_sq_rel_error: float  # standard error of mean_sq_rel_error
    predicted_rel_error: float  # sqrt(c / q) where theory gives one, else nan
    evaluations: float      # fn calls per estimate


def reference_vjp(fn, x: torch.Tensor, cotangent: torch.Tensor, method: str = "autograd", h: float = 1e-5):
    """ybar^T J by autograd (fn differentiable in torch) or central differences (2 d calls)."""
    x = x.detach().double()
    ybar = cotangent.double()
    if method == "autograd":
        xr = x.clone().requires_grad_(True)
        y = fn(xr)
        (g,) = torch.autograd.grad(y, xr, ybar.reshape(y.shape))
        return g.detach()
    if method != "central":
        raise ValueError(f"reference: unknown method {method!r}; choose 'autograd' or 'central'")
    g = torch.zeros_like(x)
    flat = g.view(-1)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = h
        e = e.view(x.shape)
        diff = _as_tensor(fn(x + e)) - _as_tensor(fn(x - e))
        flat[i] = float(ybar.reshape(-1) @ diff.reshape(-1)) / (2 * h)
    return g


def audit(fn, x: torch.Tensor, cotangent: torch.Tensor | None = None, reference: torch.Tensor | str = "autograd",
          queries=(1, 4, 16, 64), trials: int = 20, sampler="gaussian", estimator="forward", mu: float = 1e-4,
          seed: int = 0, **box_options) -> list[AuditRow]:
    """Cosine similarity and relative error of the ZO VJP against a reference, per query count."""
    x = x.detach().double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        y = _as_tensor(fn(x.clone()))
    ybar = torch.randn(y.shape, generator=gen, dtype=torch.float64) if cotangent is None else cotangent.double()
    truth = reference if isinstance(reference, torch.Tensor) else reference_vjp(fn, x, ybar, reference)
    truth = truth.double().reshape(-1)
    d = x.numel()
    name = sampler if isinstance(sampler, str) else getattr(sampler, "name", "")
    rows = []
    for q in queries:
        box = BlackBox(fn, sampler=sampler, estimator=estimator, queries=q, mu=mu, seed=seed + q, **box_options)
        if name == "dap":  # audit DAP with the guide it would have in training: earlier estimates
            box.guide_momentum = 0.0
        cos, err2, evals = [], [], []
        for _ in range(trials):
            xr = x.clone().requires_grad_(True)
            out = box(xr)
            (g,) = torch.autograd.grad(out, xr, ybar.reshape(out.shape).to(out.dtype))
            g = g.double().reshape(-1)
            cos.append(float(g @ truth) / (float(g.norm() * truth.norm()) + 1e-300))
            err2.append(float(((g - truth) ** 2).sum() / (truth ** 2).sum()))
            evals.append(box.last.info.evaluations + (1 if box.estimator.uses_base else 0))
        c = torch.tensor(cos, dtype=torch.float64)
        e = torch.tensor(err2, dtype=torch.float64)
        factor = VARIANCE_FACTOR.get(name)
        predicted = math.sqrt((d + factor) / q) if factor is not None and name != "dap" else float("nan")
        rows.append(AuditRow(q, float(c.mean()), float(c.std()), math.sqrt(float(e.mean())), float(e.mean()),
                             float(e.std()) / math.sqrt(trials), predicted, sum(evals) / trials))
    return rows


def format_audit(rows: list[AuditRow]) -> str:
    lines = [f"{'queries':>8} {'cosine':>14} {'rel.err':>9} {'theory':>9} {'evals':>7}"]
    for r in rows:
        lines.append(f"{r.queries:>8d} {r.cosine:>8.3f}±{r.cosine_std:<5.3f} {r.rel_error:>9.3f} "
                     f"{r.predicted_rel_error:>9.3f} {r.evaluations:>7.1f}")
    return "\n".join(lines)
