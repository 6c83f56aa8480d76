"""The hybrid chain rule (BlackBox) and the gradient audit."""
import math
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch

import zosci
from zosci.audit import audit, reference_vjp
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


def _truth(x, ybar):
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xr), xr, ybar)
    return g


def test_vjp_has_the_right_magnitude_and_direction():
    """Relative error of a q-query sphere VJP: E err^2 = (d - 1)/q = 5/4000; a VJP off by any factor fails."""
    x = torch.randn(6, dtype=torch.float64)
    ybar = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    truth = _truth(x, ybar)
    box = zosci.BlackBox(net, sampler="sphere", estimator="central", queries=4000, mu=1e-5, seed=1)
    g = _grad_through(box, x, ybar)
    assert float((g - truth).norm() / truth.norm()) < 3 * math.sqrt(5 / 4000)


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
    """d loss/d theta where theta -> torch layer -> black box -> torch loss: magnitude and direction."""
    layer = torch.nn.Linear(4, 6).double()
    z = torch.randn(4, dtype=torch.float64)
    box = zosci.BlackBox(net, sampler="sphere", estimator="central", queries=3000, mu=1e-5, seed=2)
    (box(layer(z)) ** 2).sum().backward()
    est = layer.weight.grad.clone()
    layer.zero_grad()
    (net(layer(z)) ** 2).sum().backward()
    assert float((est - layer.weight.grad).norm() / layer.weight.grad.norm()) < 3 * math.sqrt(5 / 3000)


class FlakySolver:
    def __call__(self, x):
        if float(x[0]) > 0.3 + 1e-3:
            raise QueryError("Newton diverged")
        return net(x)


def test_failed_queries_do_not_crash_training_and_are_counted_per_backward(caplog):
    x = torch.zeros(6, dtype=torch.float64)
    x[0] = 0.3
    box = zosci.BlackBox(FlakySolver(), queries=10, mu=1e-2, seed=0)
    g = _grad_through(box, x, torch.ones(3, dtype=torch.float64))
    first = box.last.failed
    assert torch.isfinite(g).all() and first > 0 and "failed" in caplog.text
    assert box.last.evaluations == 10 + first  # each failed point was a call, and was replaced
    _grad_through(box, x, torch.ones(3, dtype=torch.float64))
    assert box.failed == first + box.last.failed


def test_inplace_changes_of_input_or_output_cannot_corrupt_the_vjp():
    x = torch.randn(6, dtype=torch.float64)
    ybar = torch.randn(3, dtype=torch.float64)
    reference = _grad_through(zosci.BlackBox(net, queries=8, seed=3), x, ybar)
    xr = x.clone().requires_grad_(True)
    xin = xr * 1.0
    y = zosci.BlackBox(net, queries=8, seed=3)(xin)
    with torch.no_grad():
        xin.add_(10.0)  # the point changes after the forward
    (g,) = torch.autograd.grad(y, xr, ybar)
    assert torch.equal(g, reference)
    xr = x.clone().requires_grad_(True)
    y = zosci.BlackBox(net, queries=8, seed=3)(xr)
    y.mul_(3)  # the output is scaled in place: autograd records it
    (g,) = torch.autograd.grad(y, xr, ybar)
    assert torch.allclose(g, 3 * reference, rtol=1e-12)


def test_double_backward_raises_instead_of_a_silent_zero():
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    box = zosci.BlackBox(net, queries=4, seed=0)
    (g,) = torch.autograd.grad(box(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives"):
        g.pow(2).sum().backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_and_gradient_keep_the_input_dtype(dtype):
    x = torch.randn(6, dtype=dtype, requires_grad=True)
    y = zosci.BlackBox(net, queries=4, seed=0)(x)
    y.sum().backward()
    assert y.dtype == dtype and x.grad.dtype == dtype and y.device == x.device == x.grad.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_input_gives_cuda_output_and_gradient():
    x = torch.randn(6, dtype=torch.float32, device="cuda", requires_grad=True)
    box = zosci.BlackBox(net, queries=4, seed=0)
    y = box(x)
    y.sum().backward()
    cpu = torch.randn(6, dtype=torch.float32)
    assert y.device.type == "cuda" and x.grad.device.type == "cuda"
    ref = x.detach().cpu().requires_grad_(True)
    zosci.BlackBox(net, queries=4, seed=0)(ref).sum().backward()
    assert torch.allclose(x.grad.cpu(), ref.grad) and cpu.device.type == "cpu"


def test_batched_rows_get_their_own_directions_and_one_executor_batch(monkeypatch):
    """Each row's error is that of a d-dimensional problem, (d - 1)/q, not (B d - 1)/q;
    a backward sends all rows' queries to the evaluator in one call."""
    import zosci.hybrid as hybrid
    calls = []
    real = hybrid.evaluate
    monkeypatch.setattr(hybrid, "evaluate", lambda fn, pts, ex=None: calls.append(len(pts)) or real(fn, pts, ex))
    B, d, q, trials = 4, 6, 8, 150
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(B, d, dtype=torch.float64, generator=gen)
    Ybar = torch.randn(B, 3, dtype=torch.float64, generator=gen)
    truth = torch.stack([_truth(X[b], Ybar[b]) for b in range(B)])
    box = zosci.BlackBox(net, batched=True, sampler="sphere", estimator="central", queries=q, mu=1e-5, seed=0,
                         numpy_io=False)
    err2 = []
    for _ in range(trials):
        calls.clear()
        G = _grad_through(box, X, Ybar)
        assert calls == [B, B * q * 2]  # the forward's rows, then every query of every row at once
        err2.append(((G - truth) ** 2).sum(1) / (truth ** 2).sum(1))
    err2 = torch.stack(err2)
    mean, se = err2.mean(0), err2.std(0) / math.sqrt(trials)
    assert torch.all((mean - (d - 1) / q).abs() < 4 * se + 0.02), (mean, se)
    assert G.shape == X.shape


def test_batched_extra_arguments_and_keys_follow_their_rows():
    def scaled(x, k):
        return net(x) * float(k)
    box = zosci.BlackBox(scaled, batched=True, sampler="dap", queries=4, seed=0)
    X = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    k = torch.tensor([1.0, 2.0, -1.0])
    y = box(X, k, keys=["a", "b", "c"])
    assert torch.allclose(y, torch.stack([net(X[b]) * k[b] for b in range(3)]))
    y.sum().backward()
    assert sorted(box.guides) == ["a", "b", "c"]
    assert torch.allclose(box.guides["b"].value()[0], X.grad[1])  # the first estimate is the guide
    with pytest.raises(ValueError, match="keys"):
        box(X, k, keys=["a"])
    with pytest.raises(ValueError, match="args"):
        box(X, k.requires_grad_(True))


def test_jacobian_model_keeps_the_estimate_unbiased_and_cuts_its_variance():
    """ZO estimates (J - J_model) v only; J_model^T ybar is exact. A wrong model (0.3 J + noise)
    stays unbiased; a good one (J + 1 % noise) has far less variance than no model."""
    x = torch.randn(6, dtype=torch.float64)
    ybar = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    truth = _truth(x, ybar)
    J = torch.autograd.functional.jacobian(net, x)
    noise = torch.randn(J.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    models = {"none": None,
              "wrong": lambda x_, y_: (lambda v: (0.3 * J + noise) @ v),
              "good": lambda x_, y_: (lambda v: (J + 0.01 * J.norm() * noise / noise.norm()) @ v)}
    stats = {}
    for name, model in models.items():
        box = zosci.BlackBox(net, sampler="gaussian", estimator="central", queries=4, mu=1e-5,
                             jacobian_model=model, seed=5)
        est = torch.stack([_grad_through(box, x, ybar) for _ in range(400)])
        mean, se = est.mean(0), est.std(0) / 20.0
        assert torch.all((mean - truth).abs() < 4.5 * se + 1e-9), name  # unbiased
        stats[name] = float(((est - truth) ** 2).sum(1).mean())
    assert stats["good"] < 0.01 * stats["none"]


def test_state_dict_carries_the_generator_and_guides():
    x = torch.randn(6, dtype=torch.float64)
    ybar = torch.ones(3, dtype=torch.float64)
    box = zosci.BlackBox(net, sampler="dap", queries=4, seed=0)
    _grad_through(box, x, ybar)
    state = box.state_dict()
    again = zosci.BlackBox(net, sampler="dap", queries=4, seed=99)
    again.load_state_dict(state)
    assert torch.equal(_grad_through(box, x, ybar), _grad_through(again, x, ybar))


def test_executor_gives_the_same_estimate():
    x = torch.randn(6, dtype=torch.float64)
    ybar = torch.ones(3, dtype=torch.float64)
    serial = _grad_through(zosci.BlackBox(net_numpy, queries=6, seed=4, numpy_io=True), x, ybar)
    X = torch.stack([x, -x])
    serial_rows = _grad_through(zosci.BlackBox(net_numpy, batched=True, queries=6, seed=4), X, ybar.expand(2, 3))
    with ProcessPoolExecutor(2) as pool:
        parallel = _grad_through(zosci.BlackBox(net_numpy, queries=6, seed=4, numpy_io=True, executor=pool), x, ybar)
        rows = _grad_through(zosci.BlackBox(net_numpy, batched=True, queries=6, seed=4, executor=pool), X,
                             ybar.expand(2, 3))
    assert torch.equal(serial, parallel) and torch.equal(serial_rows, rows)


@pytest.mark.parametrize("sampler", ["gaussian", "sphere", "coordinate"])
def test_audit_error_falls_at_the_rate_theory_predicts(sampler):
    """Mean squared relative error of a q-query VJP = c/q (c = d+1 Gaussian, d-1 sphere), and
    r (d - r)/q^2 for coordinates without replacement (q = m d + r)."""
    x = torch.randn(6, dtype=torch.float64)
    rows = audit(net, x, queries=(2, 8, 32), trials=200, sampler=sampler, estimator="central", mu=1e-5)
    for r in rows:
        predicted = r.predicted_rel_error ** 2
        assert abs(r.mean_sq_rel_error - predicted) <= 5 * r.se_sq_rel_error + 0.02 * predicted, r
    assert rows[-1].cosine > rows[0].cosine


def test_central_reference_is_the_core_estimator_at_step_h():
    x = torch.randn(6, dtype=torch.float64)
    ybar = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    ref = reference_vjp(net_numpy, x, ybar, method="central", h=1e-5)
    assert torch.allclose(ref, _truth(x, ybar), rtol=1e-8, atol=1e-9)


def test_a_failed_forward_row_raises_naming_every_failed_row():
    X = torch.zeros(4, 6, dtype=torch.float64)
    X[1, 0] = X[3, 0] = 1.0
    with pytest.raises(QueryError) as err:
        zosci.BlackBox(FlakySolver(), batched=True, queries=2)(X)
    assert err.value.rows == [1, 3]
