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


def test_evaluation_counts():
    x = torch.zeros(4, dtype=torch.float64)
    counts = {}
    for name in ESTIMATORS:
        _, info = zosci.estimate_gradient(linear if False else (lambda z: float(z.sum())), x, "gaussian", name,
                                          queries=8, generator=torch.Generator().manual_seed(0), return_info=True)
        counts[name] = info.evaluations
    assert counts["forward"] == 9 and counts["central"] == 16
    assert 9 + 8 <= counts["p4"] <= 1 + 3 * 8
    assert 1 + 8 <= counts["p2"] <= 1 + 2 * 8  # N = 1 needs only mu_2: D_1 cancels
    assert 1 + 8 <= counts["p3"] <= 1 + 2 * 8 and 1 + 8 <= counts["p1"] <= 1 + 2 * 8


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
    assert info.failed > 0 and info.resampled > 0 and info.queries == 20
    assert "failed" in caplog.text
    g, info = zosci.estimate_gradient(Flaky(), x, "gaussian", "forward", mu=0.1, queries=20, on_failure="drop",
                                      generator=torch.Generator().manual_seed(0), return_info=True)
    assert info.failed > 0 and info.queries == 20 - info.failed and torch.isfinite(g).all()


def test_dap_without_guide_spends_a_counted_pilot():
    x = torch.ones(5, dtype=torch.float64)
    _, info = zosci.estimate_gradient(quartic_6, x, "dap", "forward", queries=4, return_info=True,
                                      generator=torch.Generator().manual_seed(0))
    assert info.evaluations == (1 + 1) + (1 + 4)


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
