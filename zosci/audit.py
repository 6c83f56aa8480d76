"""Gradient audit: how close is the ZO vector-Jacobian product to the truth?

For a black box y = fn(x) and a fixed cotangent ybar, compares the BlackBox
estimate of ybar^T J with a reference (autograd when fn is a differentiable
torch function, central differences otherwise), over ``trials`` independent
estimates per number of queries. Theory for a smooth fn and small mu: the
mean squared relative error of a q-query estimate is c/q, with c = d + 1 for
Gaussian directions and d - 1 for sphere, Rademacher and ideal DAP (Ma & Huang,
ICLR 2025). Coordinates drawn without replacement, q = m d + r, give
r (d - r) / q^2 (d - q over q for q < d; 0 for whole cycles).
The central-difference reference is the core's own estimator: BlackBox with
the coordinate sampler, central stencil and q = d (one step h per coordinate).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .hybrid import BlackBox

VARIANCE_FACTOR = {"gaussian": 1, "sphere": -1, "rademacher": -1}


def predicted_sq_rel_error(sampler: str, d: int, q: int) -> float:
    """E||g - truth||^2 / ||truth||^2 of a q-query estimate in d dimensions (nan where no theory)."""
    if sampler == "coordinate":
        r = q % d
        return r * (d - r) / q ** 2
    factor = VARIANCE_FACTOR.get(sampler)
    return float("nan") if factor is None else (d + factor) / q


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
    """ybar^T J by autograd (fn differentiable in torch) or central differences (2 d calls, step h)."""
    x = x.detach().double()
    ybar = cotangent.double()
    if method == "autograd":
        xr = x.clone().requires_grad_(True)
        y = fn(xr)
        (g,) = torch.autograd.grad(y, xr, ybar.reshape(y.shape))
        return g.detach()
    if method != "central":
        raise ValueError(f"reference: unknown method {method!r}; choose 'autograd' or 'central'")
    d = x.numel()  # coordinate directions are sqrt(d) e_i, so mu = h / sqrt(d) steps h along e_i
    box = BlackBox(fn, sampler="coordinate", estimator="central", queries=d, mu=h / math.sqrt(d))
    xr = x.clone().requires_grad_(True)
    y = box(xr)
    (g,) = torch.autograd.grad(y, xr, ybar.reshape(y.shape))
    return g.detach()


def audit(fn, x: torch.Tensor, cotangent: torch.Tensor | None = None, reference: torch.Tensor | str = "autograd",
          queries=(1, 4, 16, 64), trials: int = 20, sampler="gaussian", estimator="forward", mu: float = 1e-4,
          seed: int = 0, **box_options) -> list[AuditRow]:
    """Cosine similarity and relative error of the ZO VJP against a reference, per query count."""
    x = x.detach().double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        y = BlackBox(fn, numpy_io=box_options.get("numpy_io"))(x)  # numpy or torch fn alike
    ybar = torch.randn(y.shape, generator=gen, dtype=torch.float64) if cotangent is None else cotangent.double()
    truth = reference if isinstance(reference, torch.Tensor) else reference_vjp(fn, x, ybar, reference)
    truth = truth.double().reshape(-1)
    d = x.numel()
    name = sampler if isinstance(sampler, str) else getattr(sampler, "name", "")
    rows = []
    for q in queries:
        # DAP is audited with the guide it has in training: the moving average of its earlier estimates
        box = BlackBox(fn, sampler=sampler, estimator=estimator, queries=q, mu=mu, seed=seed + q, **box_options)
        cos, err2, evals = [], [], []
        for _ in range(trials):
            xr = x.clone().requires_grad_(True)
            out = box(xr)
            (g,) = torch.autograd.grad(out, xr, ybar.reshape(out.shape).to(out.dtype))
            g = g.double().reshape(-1)
            cos.append(float(g @ truth) / (float(g.norm() * truth.norm()) + 1e-300))
            err2.append(float(((g - truth) ** 2).sum() / (truth ** 2).sum()))
            evals.append(box.last.evaluations + (1 if box.estimator.uses_base else 0))
        c = torch.tensor(cos, dtype=torch.float64)
        e = torch.tensor(err2, dtype=torch.float64)
        predicted = math.sqrt(predicted_sq_rel_error(name, d, q))
        rows.append(AuditRow(q, float(c.mean()), float(c.std()), math.sqrt(float(e.mean())), float(e.mean()),
                             float(e.std()) / math.sqrt(trials), predicted, sum(evals) / trials))
    return rows


def format_audit(rows: list[AuditRow]) -> str:
    lines = [f"{'queries':>8} {'cosine':>14} {'rel.err':>9} {'theory':>9} {'evals':>7}"]
    for r in rows:
        lines.append(f"{r.queries:>8d} {r.cosine:>8.3f}±{r.cosine_std:<5.3f} {r.rel_error:>9.3f} "
                     f"{r.predicted_rel_error:>9.3f} {r.evaluations:>7.1f}")
    return "\n".join(lines)
