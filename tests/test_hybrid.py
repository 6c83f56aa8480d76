"""The hybrid chain rule (BlackBox) and the gradient audit."""
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch

import zosci
from zosci.audit import audit
from zosci.errors import QueryError

torch.manual_seed(0)
W1 = torch.randn(16, 6, dtype=torch.float64)
W2 = torch.randn(3, 16, dtype=torch.float64)


def net(x):
    """A smooth stand-in for a solver: R^6 -> R^3 (torch, differentiable)."""
    return W2 @ torch.tanh(W1 @ x)


def net_numpy(x):
    return (W2.numpy() @ np.tanh(W1.numpy() @ x))


def _grad_through(box, x, cotangent):
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(box(xr), xr, cotangent)
    return g


def test_forward_is_the_black_box_and_numpy_works():
    x = torch.randn(6, dtype=torch.float64)
    assert torch.allclose(zosci.BlackBox(net)(x), net(x))
    assert torch.allclose(zosci.BlackBox(net_numpy)(x), net(x))


def test_vjp_converges_to_autograd_with_many_queries():
    x = torch.randn(6, dtype=torch.float64)
    ybar = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    truth = zosci.audit.__globals__["reference_vjp"](net, x, ybar)
    box = zosci.BlackBox(net, sampler="sphere", estimator="central", queries=4000, mu=1e-5, seed=1)
    g = _grad_through(box, x, ybar)
    assert float(torch.nn.functional.cosine_similarity(g, truth, dim=0)) > 0.98


def test_pairs_serve_any_cotangent_without_new_queries():
    x = torch.randn(6, dtype=torch.float64)
    box = zosci.BlackBox(net, queries=8, seed=0)
    xr = x.clone().requires_grad_(True)
    y = box(xr)
    a, b = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    (ga,) = torch.autograd.grad(y, xr, a, retain_graph=True)
    spent = box.evaluations
    assert spent == 8  # forward: one f(x) from the forward, 8 perturbed points
    (gb,) = torch.autograd.grad(y, xr, b)
    gab = box.last.vjp(a + b)
    assert box.evaluations == spent  # no new query for the second and third cotangents
    assert torch.allclose(gab, ga + gb)


def test_chain_rule_through_differentiable_parts():
    """d loss/d theta where theta -> torch layer -> black box -> torch loss."""
    layer = torch.nn.Linear(4, 6).double()
    z = torch.randn(4, dtype=torch.float64)
    box = zosci.BlackBox(net, sampler="sphere", estimator="central", queries=3000, mu=1e-5, seed=2)
    loss = (box(layer(z)) ** 2).sum()
    loss.backward()
    est = layer.weight.grad.clone()
    layer.zero_grad()
    (net(layer(z)) ** 2).sum().backward()
    cos = torch.nn.functional.cosine_similarity(est.view(-1), layer.weight.grad.view(-1), dim=0)
    assert float(cos) > 0.95


class FlakySolver:
    def __call__(self, x):
        if float(x[0]) > 0.3 + 1e-3:
            raise QueryError("Newton diverged")
        return net(x)


def test_failed_queries_do_not_crash_training(caplog):
    x = torch.zeros(6, dtype=torch.float64)
    x[0] = 0.3
    box = zosci.BlackBox(FlakySolver(), queries=10, mu=1e-2, seed=0)
    g = _grad_through(box, x, torch.ones(3, dtype=torch.float64))
    assert torch.isfinite(g).all() and box.failed > 0 and "failed" in caplog.text


def test_executor_gives_the_same_estimate():
    x = torch.randn(6, dtype=torch.float64)
    ybar = torch.ones(3, dtype=torch.float64)
    serial = _grad_through(zosci.BlackBox(net_numpy, queries=6, seed=4, numpy_io=True), x, ybar)
    with ProcessPoolExecutor(2) as pool:
        parallel = _grad_through(zosci.BlackBox(net_numpy, queries=6, seed=4, numpy_io=True, executor=pool), x, ybar)
    assert torch.equal(serial, parallel)


@pytest.mark.parametrize("sampler", ["gaussian", "sphere"])
def test_audit_error_falls_at_the_rate_theory_predicts(sampler):
    """Mean squared relative error of a q-query VJP = c/q (c = d+1 Gaussian, d-1 sphere)."""
    x = torch.randn(6, dtype=torch.float64)
    rows = audit(net, x, queries=(2, 8, 32), trials=200, sampler=sampler, estimator="central", mu=1e-5)
    for r in rows:
        predicted = r.predicted_rel_error ** 2
        assert abs(r.mean_sq_rel_error - predicted) <= 5 * r.se_sq_rel_error + 0.02 * predicted, r
    assert rows[-1].cosine > rows[0].cosine
