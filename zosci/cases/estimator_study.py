"""Estimator study: ZO optimizers with every (sampler, estimator) pair on a synthetic problem.

The methods advance together, one step each per loop iteration, so a
checkpoint after step t holds every method's parameters and optimizer state.
metrics.csv rows: step, method ("sampler/estimator"), evaluations (cumulative
closure calls), loss (after the step), cosine (between an estimate_gradient
estimate with probe_queries queries and the autograd gradient, at step 1,
every probe_every steps and the last; blank elsewhere; probe calls are not
counted in evaluations).
"""
from __future__ import annotations

import math

import torch

from ..config import Field, Schema
from ..estimators import ESTIMATORS
from ..gradient import estimate_gradient
from ..optim import ZOSGD, ZOAdam
from ..plots import line_plot
from ..samplers import SAMPLERS

SCHEMA = Schema({
    "problem": {
        "name": Field(str, "rosenbrock", choices=["rosenbrock", "logistic"], doc="synthetic problem"),
        "dim": Field(int, 20, min=2, doc="number of parameters"),
        "samples": Field(int, 200, min=2, doc="logistic: number of data points"),
        "l2": Field(float, 1e-3, min=0, doc="logistic: L2 penalty"),
    },
    "optimizer": {
        "name": Field(str, "zoadam", choices=["zoadam", "zosgd"], doc="ZO optimizer"),
        "lr": Field(float, 1e-2, min=0, min_exclusive=True, doc="learning rate"),
        "momentum": Field(float, 0.0, min=0, max=1, max_exclusive=True, doc="zosgd: momentum"),
        "mu": Field(float, 1e-3, min=0, min_exclusive=True, doc="finite-difference step"),
        "queries": Field(int, 4, min=1, doc="directions per step"),
    },
    "study": {
        "samplers": Field(list, ["gaussian", "sphere", "dap"], item=str, choices=sorted(SAMPLERS), min=1),
        "estimators": Field(list, ["forward", "p3"], item=str, choices=sorted(ESTIMATORS), min=1),
        "steps": Field(int, 300, min=1, doc="optimizer steps per method"),
        "checkpoint_every": Field(int, 50, min=1, doc="steps between checkpoints"),
        "probe_every": Field(int, 50, min=1, doc="steps between gradient-quality probes"),
        "probe_queries": Field(int, 32, min=1, doc="queries of the probe estimate"),
    },
})


class Problem:
    """A torch-differentiable loss f(x) of a 1-D float64 tensor, and its start point."""

    def __init__(self, cfg: dict, seed: int):
        self.name, d = cfg["name"], cfg["dim"]
        self.x0 = torch.zeros(d, dtype=torch.float64)
        if self.name == "logistic":
            gen = torch.Generator().manual_seed(seed)
            self.X = torch.randn(cfg["samples"], d, generator=gen, dtype=torch.float64)
            w = torch.randn(d, generator=gen, dtype=torch.float64) / math.sqrt(d) * 3
            p = torch.sigmoid(self.X @ w)
            self.y = torch.where(torch.rand(cfg["samples"], generator=gen, dtype=torch.float64) < p, 1.0, -1.0)
            self.l2 = cfg["l2"]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.name == "rosenbrock":
            return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()
        return torch.nn.functional.softplus(-self.y * (self.X @ x)).mean() + 0.5 * self.l2 * (x @ x)


def make_optimizer(x: torch.Tensor, cfg: dict, sampler: str, estimator: str, seed: int):
    common = dict(lr=cfg["lr"], sampler=sampler, estimator=estimator, mu=cfg["mu"], queries=cfg["queries"],
                  seed=seed)
    if cfg["name"] == "zosgd":
        return ZOSGD([x], momentum=cfg["momentum"], **common)
    return ZOAdam([x], **common)


def cosine_probe(f, x, sampler, estimator, cfg, queries, seed) -> float:
    """Cosine between a ZO estimate at x and the autograd gradient."""
    gen = torch.Generator().manual_seed(seed)
    g = estimate_gradient(f, x.detach().clone(), sampler=sampler, estimator=estimator, mu=cfg["mu"],
                          queries=queries, generator=gen)
    xg = x.detach().clone().requires_grad_(True)
    (true,) = torch.autograd.grad(f(xg), xg)
    return float(g @ true / (g.norm() * true.norm()).clamp_min(1e-300))


def run(run):
    """Run (or resume) the study in run.path."""
    cfg, seed = run.config, run.config["seed"]
    study, opt_cfg = cfg["study"], cfg["optimizer"]
    steps = study["steps"]
    f = Problem(cfg["problem"], seed)
    pairs = [(s, e) for s in study["samplers"] for e in study["estimators"]]
    methods = [f"{s}/{e}" for s, e in pairs]

    state = run.load_checkpoint()
    start = 0 if state is None else state["step"]
    xs = {m: (f.x0.clone() if state is None else state["params"][m].clone()) for m in methods}
    evals = {m: 0 if state is None else state["evaluations"][m] for m in methods}
    opts = {}
    for m, (s, e) in zip(methods, pairs):
        opts[m] = make_optimizer(xs[m], opt_cfg, s, e, seed)
        if state is not None:
            opts[m].load_state_dict(state["optimizers"][m])
    if state is not None:
        run.logger.info("resuming at step %d of %d", start, steps)
    run.logger.info("%s, d=%d, %s, %d methods x %d steps", f.name, f.x0.numel(), opt_cfg["name"],
                    len(methods), steps)

    bar = run.progress(total=steps * len(methods), initial=start * len(methods), desc="estimator study")
    for step in range(start + 1, steps + 1):
        probe = step == 1 or step % study["probe_every"] == 0 or step == steps
        for i, (m, (s, e)) in enumerate(zip(methods, pairs)):
            x = xs[m]
            opts[m].step(lambda: f(x))
            evals[m] += opts[m].last_info.evaluations
            with torch.no_grad():
                loss = float(f(x))
            cosine = (cosine_probe(f, x, s, e, opt_cfg, study["probe_queries"], seed * 1_000_003 + i * 100_003 + step)
                      if probe else None)
            run.log_metrics(step, method=m, evaluations=evals[m], loss=loss, cosine=cosine)
            bar.update()
        if step % study["checkpoint_every"] == 0 or step == steps:
            run.save_checkpoint({"step": step, "params": {m: xs[m].detach().clone() for m in methods},
                                 "optimizers": {m: opts[m].state_dict() for m in methods},
                                 "evaluations": dict(evals)}, step)
    bar.close()
    report(run, methods)


def report(run, methods):
    """Plots from metrics.csv and a summary table in the log."""
    rows = run.read_metrics()
    by = {m: [r for r in rows if r["method"] == m] for m in methods}
    loss_png = line_plot(run.plot_path("loss"),
                         {m: ([int(r["evaluations"]) for r in rs], [float(r["loss"]) for r in rs])
                          for m, rs in by.items()},
                         xlabel="evaluations of f", ylabel="loss", title=run.config["name"], logy=True)
    cos_png = line_plot(run.plot_path("cosine"),
                        {m: ([int(r["step"]) for r in rs if r["cosine"]], [float(r["cosine"]) for r in rs if r["cosine"]])
                         for m, rs in by.items()},
                        xlabel="step", ylabel="cosine(estimate, gradient)", title="gradient-estimate quality")
    width = max(len(m) for m in methods + ["method"])
    lines = [f"{'method':<{width}}  {'final loss':>12}  {'evaluations':>11}  {'cosine':>7}"]
    for m, rs in by.items():
        if not rs:
            continue
        cos = [r["cosine"] for r in rs if r["cosine"]]
        lines.append(f"{m:<{width}}  {float(rs[-1]['loss']):>12.5g}  {int(rs[-1]['evaluations']):>11d}  "
                     f"{float(cos[-1]) if cos else float('nan'):>7.3f}")
    run.logger.info("summary (cosine: last probe)\n%s", "\n".join(lines))
    run.logger.info("plots: %s, %s", loss_png, cos_png)
