"""python -m zosci.bench estimators: the synthetic studies of Ma & Huang.

1. f = x1^2 + x2^2 at x = (0.1, 1): per-coordinate error of uniform (sphere)
   vs DAP single-query estimates (ICLR 2025, the motivating example).
2. MSE of forward, central and p1-p4 (geometric and Zipf) against mu and
   against queries on f_reg = x^T A^T A x and a logistic loss f_cls (NeurIPS 2025).
3. Measured per-query variance over the first-order bound (d-1)||grad f||^2,
   per sampler, on a linear function (ICLR 2025, Theorem: equality iff ||v|| or
   grad^T v is constant).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import zosci
from zosci.guide import Guide
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _mse(f, grad, x, sampler, estimator, mu, queries, trials, seed, sequence="geometric", guide=None):
    """E||g - grad||^2 over trials, and evaluations per estimate."""
    gen = torch.Generator().manual_seed(seed)
    errs, evals = [], 0
    for _ in range(trials):
        g, info = zosci.estimate_gradient(f, x, sampler, estimator, mu=mu, queries=queries, generator=gen,
                                          sequence=sequence, guide=guide, return_info=True)
        errs.append(float(((g - grad) ** 2).sum()))
        evals += info.evaluations
    return sum(errs) / trials, evals / trials


def study_dap(trials, out):
    f = lambda x: float((x ** 2).sum())  # noqa: E731
    x = torch.tensor([0.1, 1.0], dtype=torch.float64)
    grad = 2 * x
    gen = torch.Generator().manual_seed(0)
    rows = {}
    for label, sampler, guide in [("uniform (sphere)", "sphere", None), ("gaussian", "gaussian", None),
                                  ("dap, no guide (sphere)", "dap", None),
                                  ("dap, guide = EMA", "dap", Guide(0.9)),  # earlier estimates at this x
                                  ("dap, guide = grad", "dap", grad)]:
        est = torch.stack([zosci.estimate_gradient(f, x, sampler, "forward", mu=1e-6, queries=1, guide=guide,
                                                   generator=gen) for _ in range(trials)])
        rows[label] = (est - grad).abs().mean(0) / grad.abs()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, (label, rel) in enumerate(rows.items()):
        ax.bar([i * 3, i * 3 + 1], rel.numpy(), color=["C0", "C1"])
    ax.set_xticks([i * 3 + 0.5 for i in range(len(rows))], list(rows), rotation=15, fontsize=7)
    ax.set_ylabel("mean |g_i - grad_i| / |grad_i|")
    ax.set_title("f = x1^2 + x2^2 at (0.1, 1): blue x1, orange x2", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "dap_coordinates.png", dpi=120)
    plt.close(fig)
    lines = ["(1) f = x1^2 + x2^2 at x = (0.1, 1), one query, mean relative error per coordinate",
             "    (guide = EMA: zosci.guide.Guide carried over the trials, as in an optimizer at rest)",
             f"    {'method':<22} {'x1':>8} {'x2':>8}"]
    lines += [f"    {k:<22} {float(v[0]):>8.3f} {float(v[1]):>8.3f}" for k, v in rows.items()]
    return lines


def _problems(d):
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64) / d ** 0.5
    x = torch.randn(d, generator=gen, dtype=torch.float64)
    ata = a.T @ a
    feats = torch.randn(4 * d, d, generator=gen, dtype=torch.float64) / d ** 0.5
    labels = (feats @ torch.randn(d, generator=gen, dtype=torch.float64) > 0).double()

    def f_reg(z):
        return float(z @ ata @ z)

    def f_cls(z):
        return float(torch.nn.functional.binary_cross_entropy_with_logits(feats @ z, labels))

    zr = x.clone().requires_grad_(True)
    g_cls = torch.autograd.grad(torch.nn.functional.binary_cross_entropy_with_logits(feats @ zr, labels), zr)[0]
    return {"f_reg": (f_reg, 2 * ata @ x, x), "f_cls": (f_cls, g_cls.detach(), x)}


METHODS = [("forward", "geometric"), ("central", "geometric")] + [
    (p, s) for p in ("p1", "p2", "p3", "p4") for s in ("geometric", "zipf")]


def study_unbiased(d, trials, mus, queries, out):
    lines = []
    for name, (f, grad, x) in _problems(d).items():
        table = {}
        for est, seq in METHODS:
            label = est if est in ("forward", "central") else f"{est}/{seq}"
            table[label] = [_mse(f, grad, x, "gaussian", est, mu, 20, trials, 7, seq) for mu in mus]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, vals in table.items():
            ax.loglog(mus, [m for m, _ in vals], marker="o", label=label)
        ax.set_xlabel("mu")
        ax.set_ylabel("MSE (20 queries)")
        ax.set_title(f"{name}, d = {d}")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / f"mse_vs_mu_{name}.png", dpi=120)
        plt.close(fig)
        norm2 = float((grad ** 2).sum())
        lines.append(f"(2) {name}, d = {d}: MSE / ||grad||^2 with 20 Gaussian queries, vs mu "
                     f"(evaluations per estimate in brackets)")
        lines.append("    " + f"{'method':<14}" + "".join(f"{'mu=' + format(m, 'g'):>20}" for m in mus))
        for label, vals in table.items():
            lines.append("    " + f"{label:<14}" + "".join(f"{m / norm2:>12.4g} [{e:>5.1f}]" for m, e in vals))
        qtable = {}
        for est, seq in [("forward", "geometric"), ("central", "geometric"), ("p3", "geometric"),
                         ("p4", "geometric"), ("p2", "zipf")]:
            label = est if est in ("forward", "central") else f"{est}/{seq}"
            qtable[label] = [_mse(f, grad, x, "gaussian", est, mus[-1], q, trials, 8, seq) for q in queries]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, vals in qtable.items():
            ax.loglog(queries, [m for m, _ in vals], marker="o", label=label)
        ax.set_xlabel("queries")
        ax.set_ylabel(f"MSE (mu = {mus[-1]:g})")
        ax.set_title(f"{name}, d = {d}")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / f"mse_vs_queries_{name}.png", dpi=120)
        plt.close(fig)
        lines.append(f"    vs queries at mu = {mus[-1]:g}: MSE / ||grad||^2")
        lines.append("    " + f"{'method':<14}" + "".join(f"{'q=' + str(q):>12}" for q in queries))
        for label, vals in qtable.items():
            lines.append("    " + f"{label:<14}" + "".join(f"{m / norm2:>12.4g}" for m, _ in vals))
    return lines


def study_variance(d, trials):
    c = torch.linspace(-1, 2, d, dtype=torch.float64)
    x = torch.zeros(d, dtype=torch.float64)
    bound = (d - 1) * float(c @ c)
    noisy_guide = c + 0.5 * c.norm() / d ** 0.5 * torch.randn(d, generator=torch.Generator().manual_seed(3),
                                                              dtype=torch.float64)
    lines = [f"(3) per-query variance E||g - grad||^2 / ((d-1)||grad||^2) on a linear f, d = {d}, "
             f"{trials} queries (theory in brackets)"]
    for label, sampler, guide, theory in [("gaussian", "gaussian", None, (d + 1) / (d - 1)),
                                          ("sphere", "sphere", None, 1.0),
                                          ("rademacher", "rademacher", None, 1.0),
                                          ("coordinate", "coordinate", None, 1.0),
                                          ("dap (guide = grad)", "dap", c, 1.0),
                                          ("dap (noisy guide)", "dap", noisy_guide, None)]:
        mse, _ = _mse(lambda z: float(c @ z), c, x, sampler, "forward", 1e-3, 1, trials, 5, guide=guide)
        th = "" if theory is None else f"[{theory:.3f}]"
        lines.append(f"    {label:<20} {mse / bound:>8.3f} {th}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m zosci.bench estimators", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer trials (about 20 s)")
    parser.add_argument("--dim", type=int, default=100, help="dimension of f_reg and f_cls (default 100)")
    parser.add_argument("--out", default="runs/bench-estimators", help="folder for the PNGs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trials = 20 if args.quick else 60
    start = time.time()
    lines = study_dap(200 if args.quick else 2000, out)
    lines += study_unbiased(args.dim, trials, [1.0, 0.3, 0.1, 0.01, 1e-3], [5, 20, 80], out)
    lines += study_variance(20, 2000 if args.quick else 20000)
    lines.append(f"plots in {out}/ ; {time.time() - start:.0f} s")
    print("\n".join(lines))
    return 0
