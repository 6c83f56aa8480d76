"""Estimators: the variance bound and its equality cases, bias and unbiasedness."""
import math
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

import zosci
from zosci.errors import QueryError
from zosci.estimators import ESTIMATORS, get_estimator

D = 10
C = torch.linspace(-1.0, 2.0, D, dtype=torch.float64)


def linear(x):
    return float(C @ x)


def quartic(x):
    return float((x ** 3).sum() + 0.5 * (x ** 4).sum() + x[0] * x[1] ** 2)


def quartic_grad(x):
    g = 3 * x ** 2 + 2 * x ** 3
    g[0] += x[1] ** 2
    g[1] += 2 * x[0] * x[1]
    return g


def _per_query_errors(sampler, n, guide=None):
    gen = torch.Generator().manual_seed(1)
    x = torch.zeros(D, dtype=torch.float64)
    err = [float(((zosci.estimate_gradient(linear, x, sampler, "forward", mu=1e-2, queries=1,
                                           guide=guide, generator=gen) - C) ** 2).sum()) for _ in range(n)]
    return torch.tensor(err, dtype=torch.float64)


@pytest.mark.parametrize("sampler,factor", [("sphere", D - 1), ("dap", D - 1), ("gaussian", D + 1),
                                            ("rademacher", D - 1), ("coordinate", D - 1)])
def test_variance_on_linear_function_matches_theory(sampler, factor):
    """E||g - grad||^2 = (d-1)||grad||^2 at the optimum (sphere, DAP with the true
    gradient as guide), (d+1)||grad||^2 for Gaussian directions (Ma & Huang 2025)."""
    n = 3000
    err = _per_query_errors(sampler, n, guide=C if sampler == "dap" else None)
    expected = factor * float(C @ C)
    se = float(err.std()) / math.sqrt(n)
    assert abs(float(err.mean()) - expected) <= 5 * se + 1e-9 * expected, (float(err.mean()), expected, se)


def test_dap_with_exact_guide_has_constant_directional_derivative():
    """grad^T v = +-||grad||: the estimated directional derivative never varies."""
    gen = torch.Generator().manual_seed(2)
    x = torch.zeros(D, dtype=torch.float64)
    for _ in range(20):
        _, info = zosci.estimate_gradient(linear, x, "dap", "forward", mu=1e-2, queries=3, guide=C,
                                          generator=gen, return_info=True)
        deltas = torch.tensor([abs(q.delta) for q in info.kept], dtype=torch.float64)
        assert torch.allclose(deltas, C.norm().expand(3), rtol=1e-8)


def _batch_means(estimator, batches=40, per_batch=1500, mu=0.5):
    x = torch.tensor([0.3, -0.4, 0.8], dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    means = torch.stack([zosci.estimate_gradient(quartic, x, "gaussian", estimator, mu=mu, queries=per_batch,
                                                 generator=gen) for _ in range(batches)])
    return means.mean(0), means.std(0) / math.sqrt(batches), quartic_grad(x)


@pytest.mark.parametrize("estimator", ["p1", "p2", "p3", "p4"])
@pytest.mark.parametrize("sequence", ["geometric", "zipf"])
def test_unbiased_family_is_unbiased_at_large_mu(estimator, sequence):
    x = torch.tensor([0.3, -0.4, 0.8], dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    means = torch.stack([zosci.estimate_gradient(quartic, x, "gaussian", estimator, mu=0.5, queries=1500,
                                                 generator=gen, sequence=sequence) for _ in range(40)])
    mean, se = means.mean(0), means.std(0) / math.sqrt(40)
    # 4 standard errors of the mean of 40 batch means (Student t_39: false alarm < 1e-3 per coordinate);
    # the truncated series leaves a bias ~ mu * 1e-4, far below that
    assert torch.all((mean - quartic_grad(x)).abs() <= 4 * se), (mean, quartic_grad(x), se)


@pytest.mark.parametrize("estimator", ["forward", "central"])
def test_finite_differences_are_biased_at_large_mu(estimator):
    mean, se, truth = _batch_means(estimator)
    assert torch.any((mean - truth).abs() > 8 * se), (mean, truth, se)


class Counted:
    """f that counts its calls."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, x):
        self.calls += 1
        return self.f(x)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_evaluation_counts_are_exact(name):
    """info.evaluations is the number of calls made: f(x) once (if used) + the nonzero steps of each stencil."""
    x = torch.zeros(4, dtype=torch.float64)
    f = Counted(lambda z: float(z.sum()))
    _, info = zosci.estimate_gradient(f, x, "gaussian", name, queries=8, generator=torch.Generator().manual_seed(0),
                                      return_info=True)
    steps = sum(len([t for t, _ in q.stencil if t != 0.0]) for q in info.kept)
    uses_base = any(t == 0.0 for q in info.kept for t, _ in q.stencil)
    assert info.evaluations == f.calls == steps + uses_base
    per_query = {"forward": 1, "central": 2}
    if name in per_query:
        assert f.calls == per_query[name] * 8 + (name == "forward")


def test_generator_makes_estimates_bit_for_bit_reproducible():
    x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for name in ("gaussian", "dap", "sphere"):
        a = zosci.estimate_gradient(quartic_6, x, name, "p3", generator=torch.Generator().manual_seed(5))
        b = zosci.estimate_gradient(quartic_6, x, name, "p3", generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, b) and a.dtype == x.dtype and a.shape == x.shape


def quartic_6(x):
    return float((x ** 4).sum() + x.sum())


def test_executor_does_not_change_the_result():
    x = torch.linspace(-1, 1, 6, dtype=torch.float64)
    serial = zosci.estimate_gradient(quartic_6, x, "sphere", "p4", queries=6,
                                     generator=torch.Generator().manual_seed(9))
    with ProcessPoolExecutor(2) as pool:
        parallel = zosci.estimate_gradient(quartic_6, x, "sphere", "p4", queries=6,
                                           generator=torch.Generator().manual_seed(9), executor=pool)
    assert torch.equal(serial, parallel)


class Flaky:
    """Fails (QueryError) when the first coordinate is perturbed upwards past a threshold."""

    def __call__(self, x):
        if x[0] > 0.05:
            raise QueryError("inverted cell 3")
        return float((x ** 2).sum() + x[0])


def test_failed_queries_are_resampled_or_dropped_and_counted(caplog):
    x = torch.zeros(4, dtype=torch.float64)
    g, info = zosci.estimate_gradient(Flaky(), x, "gaussian", "forward", mu=0.1, queries=20,
                                      generator=torch.Generator().manual_seed(0), return_info=True)
    assert info.failed > 0 and info.resampled == info.failed and info.queries == 20
    assert info.evaluations == 1 + 20 + info.failed  # every failed point was a call too
    assert "failed" in caplog.text
    g, info = zosci.estimate_gradient(Flaky(), x, "gaussian", "forward", mu=0.1, queries=20, on_failure="drop",
                                      generator=torch.Generator().manual_seed(0), return_info=True)
    assert info.failed > 0 and info.queries == 20 - info.failed and torch.isfinite(g).all()


class FailsAlongFirstAxis:
    """Linear c.x that fails (QueryError) wherever x_0 > b mu: failure depends on the direction."""

    def __init__(self, b, mu):
        self.limit = b * mu

    def __call__(self, x):
        if float(x[0]) > self.limit:
            raise QueryError("diverged")
        return float(C @ x)


def test_resampling_biases_towards_directions_that_succeed_as_documented():
    """Resampled estimates have mean E[v v^T | success] c. Gaussian v failing when v_0 > b:
    E[v_0^2 | v_0 <= b] = 1 - b phi(b) / Phi(b), so E[g_0] = 0.745 c_0 at b = 0.5, others unbiased."""
    b, mu, trials = 0.5, 0.1, 60
    phi = math.exp(-b * b / 2) / math.sqrt(2 * math.pi)
    Phi = 0.5 * (1 + math.erf(b / math.sqrt(2)))
    shrink = 1 - b * phi / Phi
    gen = torch.Generator().manual_seed(3)
    x = torch.zeros(D, dtype=torch.float64)
    est = torch.stack([zosci.estimate_gradient(FailsAlongFirstAxis(b, mu), x, "gaussian", "forward", mu=mu,
                                               queries=200, generator=gen) for _ in range(trials)])
    mean, se = est.mean(0), est.std(0) / math.sqrt(trials)
    assert abs(float(mean[0]) - shrink * float(C[0])) < 4 * float(se[0])       # the predicted bias ...
    assert abs(float(mean[0]) - float(C[0])) > 10 * float(se[0])              # ... is real and measurable
    assert torch.all((mean[1:] - C[1:]).abs() < 4.5 * se[1:])                 # other axes unbiased


class FailsOnCoordinate:
    def __init__(self, j):
        self.j = j

    def __call__(self, x):
        if float(x[self.j]) != 0.0:
            raise QueryError("coordinate %d breaks the solver" % self.j)
        return float(C @ x)


@pytest.mark.parametrize("queries", [D, 4])
def test_coordinate_failures_keep_the_cycle_intact(queries):
    """A failed coordinate is replaced by an unused one of the same cycle, never by a repeat;
    at q = d none is left, and the estimate averages the d - 1 kept (documented rule)."""
    x = torch.zeros(D, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    j = None
    for _ in range(20):  # find a seed whose first queries hit coordinate 2 when q < d
        g, info = zosci.estimate_gradient(FailsOnCoordinate(2), x, "coordinate", "forward", mu=1e-3,
                                          queries=queries, generator=gen, return_info=True)
        if info.failed:
            j = 2
            break
    assert j == 2
    used = [int(q.direction.flat().nonzero()) for q in info.kept]
    assert len(used) == len(set(used)) and 2 not in used and info.failed == 1
    if queries == D:
        assert info.resampled == 0 and len(used) == D - 1
        expected = C * D / (D - 1)
        expected[2] = 0.0
        assert torch.allclose(g, expected, atol=1e-9)
    else:
        assert info.resampled == 1 and len(used) == queries


def test_dap_without_guide_draws_sphere_directions_and_evaluates_f_once():
    x = torch.ones(5, dtype=torch.float64)
    f = Counted(quartic_6)
    dap, info = zosci.estimate_gradient(f, x, "dap", "forward", queries=4, return_info=True,
                                        generator=torch.Generator().manual_seed(0))
    sphere = zosci.estimate_gradient(quartic_6, x, "sphere", "forward", queries=4,
                                     generator=torch.Generator().manual_seed(0))
    assert info.evaluations == f.calls == 1 + 4 and torch.equal(dap, sphere)


def test_dap_guide_is_the_moving_average_of_earlier_estimates():
    """A Guide carried across calls holds the EMA of the frame estimates and steers DAP."""
    from zosci.guide import Guide
    x = torch.zeros(D, dtype=torch.float64)
    guide, gen, ema = Guide(beta=0.5), torch.Generator().manual_seed(1), None
    for _ in range(30):
        g = zosci.estimate_gradient(linear, x, "dap", "forward", mu=1e-2, queries=4, guide=guide, generator=gen)
        ema = g.clone() if ema is None else 0.5 * ema + 0.5 * g
    assert torch.allclose(guide.value()[0], ema, rtol=1e-12, atol=1e-12)
    cos = float(guide.value()[0] @ C / (guide.value()[0].norm() * C.norm()))
    # an EMA of ~3 effective estimates of 4 queries each: E cos^2 ~ 1 / (1 + (d - 1) / 12)
    assert cos > 0.5


def test_bad_arguments_name_the_field():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="queries"):
        zosci.estimate_gradient(quartic_6, x, queries=0)
    with pytest.raises(ValueError, match="mu"):
        zosci.estimate_gradient(quartic_6, x, mu=-1.0)
    with pytest.raises(ValueError, match="estimator: unknown"):
        get_estimator("backward")
    with pytest.raises(ValueError, match="x: must be a 1-D"):
        zosci.estimate_gradient(quartic_6, torch.zeros(2, 2))
