"""ZO optimizers, exact in-place perturbation, and the positive orthant."""
import math

import pytest
import torch

import zosci
from zosci.manifolds import Euclidean, PositiveOrthant
from zosci.optim import ZOSGD, ZOAdam
from zosci.errors import QueryError
from zosci.perturb import Walk, perturbed
from zosci.samplers import CHUNK, get_sampler


def rosenbrock(x):
    return float((100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum())


def _logistic_problem(d=10, n=200):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    w_true = torch.randn(d, generator=g, dtype=torch.float64)
    y = (a @ w_true + 0.3 * torch.randn(n, generator=g, dtype=torch.float64) > 0).double()

    def loss(w):
        return float(torch.nn.functional.binary_cross_entropy_with_logits(a @ w, y))
    return loss


@pytest.mark.parametrize("opt_cls,kwargs", [
    (ZOSGD, dict(lr=2e-4, momentum=0.9, sampler="sphere", estimator="forward", queries=4, mu=1e-4)),
    (ZOAdam, dict(lr=2e-2, sampler="gaussian", estimator="p3", queries=4, mu=1e-3)),
    (ZOAdam, dict(lr=2e-2, sampler="dap", estimator="forward", queries=4, mu=1e-3)),
])
def test_optimizers_decrease_rosenbrock(opt_cls, kwargs):
    x = torch.nn.Parameter(torch.full((6,), -0.5, dtype=torch.float64))
    opt = opt_cls([x], seed=1, **kwargs)
    start = rosenbrock(x.detach())
    for _ in range(400):
        opt.step(lambda: rosenbrock(x.detach()))
    assert rosenbrock(x.detach()) < 0.2 * start


def _logistic_tensors(d=10, n=200):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    w_true = torch.randn(d, generator=g, dtype=torch.float64)
    y = (a @ w_true + 0.3 * torch.randn(n, generator=g, dtype=torch.float64) > 0).double()
    return a, y


def _gd_gap(steps, lr, momentum):
    """Fraction of the gap to the optimum left by exact-gradient SGD (torch.optim.SGD), and the optimum."""
    a, y = _logistic_tensors()
    loss = lambda w: torch.nn.functional.binary_cross_entropy_with_logits(a @ w, y)  # noqa: E731
    w = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    lbfgs = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe", tolerance_grad=1e-12)

    def closure():
        lbfgs.zero_grad()
        value = loss(w)
        value.backward()
        return value
    lbfgs.step(closure)
    best = float(loss(w.detach()))
    w = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    sgd = torch.optim.SGD([w], lr=lr, momentum=momentum)
    for _ in range(steps):
        sgd.zero_grad()
        loss(w).backward()
        sgd.step()
    start = float(loss(torch.zeros(10, dtype=torch.float64)))
    return (float(loss(w.detach())) - best) / (start - best), best, start


@pytest.mark.parametrize("sampler", ["gaussian", "sphere", "dap", "rademacher"])
def test_zo_sgd_tracks_exact_gradient_descent(sampler):
    """E[g] = grad f, so ZO-SGD leaves the same gap to the optimum as SGD with exact gradients
    (0.20 here) within 10 %; an estimate off by a factor 2 (or 1/2) leaves 0.14 (0.29)."""
    loss = _logistic_problem()
    gd_gap, best, start = _gd_gap(300, 0.05, 0.5)
    w = torch.nn.Parameter(torch.zeros(10, dtype=torch.float64))
    opt = ZOSGD([w], lr=0.05, momentum=0.5, sampler=sampler, queries=2, seed=0)
    for _ in range(300):
        opt.step(lambda: loss(w.detach()))
    zo_gap = (loss(w.detach()) - best) / (start - best)
    assert abs(zo_gap / gd_gap - 1) < 0.1, (zo_gap, gd_gap)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_perturbation_restores_signed_zeros(dtype):
    """-0.0 + t v - t v is +0.0 in IEEE arithmetic; the restore compares bits, so -0.0 comes back."""
    params = [torch.tensor([-0.0, 0.0, -0.0, 1.0] * 64, dtype=dtype)]
    original = params[0].clone()
    direction = get_sampler("gaussian").draw(1, 0, 1, params)
    with perturbed(params, direction, 1e-2):
        pass
    assert torch.equal(torch.signbit(params[0]), torch.signbit(original))


def test_perturbation_restores_bit_for_bit_where_naive_undo_does_not():
    g = torch.Generator().manual_seed(0)
    # values across many magnitudes, several chunks: x + t v - t v is not x in floating point
    params = [torch.randn(CHUNK + 1000, generator=g) * torch.logspace(-8, 2, CHUNK + 1000),
              torch.randn(7, 3, generator=g)]
    original = [p.clone() for p in params]
    direction = get_sampler("gaussian").draw(5, 0, 1, params)
    naive = [p.clone().add_(v, alpha=1e-2).add_(v, alpha=-1e-2) for p, v in zip(params, direction.tensors())]
    assert not all(torch.equal(a, b) for a, b in zip(naive, original))  # the problem is real
    for manifold in (Euclidean, [Euclidean, Euclidean]):
        with perturbed(params, direction, 1e-2, manifold):
            assert not torch.equal(params[0], original[0])
            assert torch.allclose(params[1], original[1] + 1e-2 * direction.part(1))
        assert all(torch.equal(a, b) for a, b in zip(params, original))
    scales = [original[0].abs() + 1e-6]
    keep = scales[0].clone()
    with perturbed(scales, direction, 0.5, PositiveOrthant):
        assert bool((scales[0] > 0).all())
    assert torch.equal(scales[0], keep)


def _mixed_params():
    g = torch.Generator().manual_seed(0)
    # values across many magnitudes, an odd length (no 8-byte words), several chunks, and a small tensor
    return [torch.randn(2 * CHUNK + 1001, generator=g) * torch.logspace(-8, 2, 2 * CHUNK + 1001),
            torch.randn(7, 3, generator=g)]


@pytest.mark.parametrize("manifold", [Euclidean, PositiveOrthant])
def test_walk_visits_every_point_then_restores_bit_for_bit(manifold):
    params = _mixed_params()
    if manifold is PositiveOrthant:
        params = [p.abs() + 1e-6 for p in params]
    original = [p.clone() for p in params]
    direction = get_sampler("rademacher").draw(3, 0, 1, params)
    points = [1e-2, -1e-2, 3e-2]
    if manifold is Euclidean:  # the problem is real: walking straight from point to point misses x
        straight = [p.clone() for p in params]
        for k, v in enumerate(direction.tensors()):
            for a, b in zip([0.0] + points, points + [0.0]):
                manifold.move_(straight[k], v, b - a)
        assert not torch.equal(straight[0], original[0])
    with Walk(params, direction, points, manifold) as stops:
        visited = []
        for t in stops:
            visited.append(t)
            for p, x, v in zip(params, original, direction.tensors()):
                assert torch.equal(p, manifold.move(x, v, t))  # each point is reached from x itself
    assert visited == points
    assert all(torch.equal(a, b) for a, b in zip(params, original))


def test_walk_left_early_still_restores_bit_for_bit():
    params = _mixed_params()
    original = [p.clone() for p in params]
    direction = get_sampler("gaussian").draw(4, 0, 1, params)
    with pytest.raises(RuntimeError, match="solver"):
        with Walk(params, direction, [1e-2, -1e-2]) as stops:
            next(iter(stops))
            raise RuntimeError("solver failed")
    assert all(torch.equal(a, b) for a, b in zip(params, original))
    with Walk(params, direction, [1e-2, -1e-2]) as stops:
        for _ in stops:
            break
    assert all(torch.equal(a, b) for a, b in zip(params, original))


def test_two_point_step_draws_each_chunk_three_times(monkeypatch):
    """Out to x + mu v; back to x and on to x - mu v; back to x and the update in the same pass: 3 draws of
    each chunk of v. It was 5 when each point had its own move and return, and 4 with a separate update."""
    params = [torch.nn.Parameter(torch.randn(CHUNK + 10)), torch.nn.Parameter(torch.randn(5))]
    draws = []
    cls = type(get_sampler("rademacher").draw(0, 0, 1, params))
    chunk = cls.chunk
    monkeypatch.setattr(cls, "chunk", lambda self, k, c, sl: draws.append((k, c)) or chunk(self, k, c, sl))
    opt = ZOSGD(params, lr=1e-3, sampler="rademacher", estimator="central", mu=1e-3)
    before = [p.detach().clone() for p in params]
    opt.step(lambda: float(sum((p ** 2).sum() for p in params)))
    assert sorted(set(draws)) == [(0, 0), (0, 1), (1, 0)]
    assert all(draws.count(key) == 3 for key in set(draws))
    # and the update is the two-sided one applied to the exactly restored x
    v = opt.sampler.draw(opt.last_record[0], 0, 1, params).tensors()
    delta = opt.last_record[1][0][1]
    for p, x, vk in zip(params, before, v):
        assert torch.equal(p.detach(), x.add(vk.mul(delta), alpha=-1e-3))  # x itself, not x + round-off


def test_update_after_a_failed_last_query_starts_from_x():
    """The last query fails half-way through its walk: the update (of the query kept) starts from x exactly."""
    params = _mixed_params()
    before = [p.clone() for p in params]
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 4:  # the second query's second point
            raise QueryError("solver failed")
        return float(sum((p.double() ** 2).sum() for p in params))

    opt = ZOSGD(params, lr=1e-3, estimator="central", queries=2, on_failure="drop")
    opt.step(closure)
    (index, delta), = opt.last_record[1]
    assert index == 0 and opt.last_info.failed == 1
    v = opt.sampler.draw(opt.last_record[0], 0, 2, params).tensors()
    for p, x, vk in zip(params, before, v):
        assert torch.equal(p, x.add(vk.mul(delta), alpha=-1e-3))


def test_step_restores_parameters_before_the_update():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    before = [p.detach().clone() for p in net.parameters()]
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    seen = []

    def closure():
        seen.append([p.detach().clone() for p in net.parameters()])
        return float(((net(x) - y) ** 2).mean())

    opt = ZOSGD(net.parameters(), lr=0.0, sampler="gaussian", estimator="forward", queries=1)
    opt.step(closure)
    assert len(seen) == 2  # forward estimator: f(x) and f(x + mu v), nothing more
    assert all(torch.equal(a, b) for a, b in zip(seen[0], before))
    assert not all(torch.equal(a, b) for a, b in zip(seen[1], before))
    assert all(torch.equal(p.detach(), b) for p, b in zip(net.parameters(), before))


def test_state_dict_resumes_identically():
    loss = _logistic_problem()

    def run(steps, resume_at=None):
        w = torch.nn.Parameter(torch.zeros(10, dtype=torch.float64))
        opt = ZOAdam([w], lr=0.05, sampler="dap", queries=2, seed=3)
        for i in range(steps):
            if i == resume_at:
                state, w_saved = opt.state_dict(), w.detach().clone()
                w = torch.nn.Parameter(w_saved)
                opt = ZOAdam([w], lr=0.05, sampler="dap", queries=2, seed=99)
                opt.load_state_dict(state)
            opt.step(lambda: loss(w.detach()))
        return w.detach()

    assert torch.equal(run(12), run(12, resume_at=5))


def test_orthant_optimizer_never_leaves_positive_orthant():
    s = torch.nn.Parameter(torch.full((8,), 0.1, dtype=torch.float64))
    target = torch.linspace(0.5, 2.0, 8, dtype=torch.float64)
    f = lambda: float(((s.detach() - target) ** 2).sum())  # noqa: E731
    euclid = torch.nn.Parameter(s.detach().clone())
    g = lambda: float(((euclid.detach() - target) ** 2).sum())  # noqa: E731
    opt = ZOSGD([s], lr=5.0, manifold="orthant", queries=2, seed=0)
    bad = ZOSGD([euclid], lr=5.0, queries=2, seed=0)
    for _ in range(10):
        opt.step(f)
        bad.step(g)
        assert bool((s > 0).all()) and bool(torch.isfinite(s).all())
    assert bool((euclid <= 0).any())  # the same steps in Euclidean coordinates leave the orthant
    small = torch.nn.Parameter(torch.full((8,), 0.1, dtype=torch.float64))
    opt = ZOSGD([small], lr=0.02, manifold="orthant", queries=4, seed=0)
    h = lambda: float(((small.detach() - target) ** 2).sum())  # noqa: E731
    start = h()
    for _ in range(300):
        opt.step(h)
    assert h() < 0.05 * start


def test_orthant_gradient_is_the_riemannian_gradient():
    """s * mean(delta v) estimates s^2 grad f under <u, w>_s = sum u w / s^2."""
    s = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    est = torch.stack([zosci.estimate_orthant_gradient(lambda z: float(c @ z), s, estimator="central", mu=1e-4,
                                                       queries=500, generator=gen) for _ in range(20)])
    mean, se = est.mean(0), est.std(0) / math.sqrt(20)
    assert torch.all((mean - s ** 2 * c).abs() <= 5 * se)
    assert torch.all(se < 0.05 * (s ** 2 * c).abs())  # tight enough to tell s^2 c from s c or c


def test_orthant_exponential_map_is_the_one_the_optimizers_use():
    """Exp_s(w) = s exp(w / s); ZOSGD's orthant update from frame estimate g is Exp_s(-lr s g)."""
    s = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    w = torch.tensor([0.1, -0.3, 0.7], dtype=torch.float64)
    assert torch.allclose(zosci.orthant.exp_map(s, w), s * torch.exp(w / s), rtol=1e-15)
    huge = zosci.orthant.exp_map(s, torch.full((3,), -1e6, dtype=torch.float64))
    assert bool((huge > 0).all()) and bool(torch.isfinite(huge).all())  # clamped like the optimizers' moves
    p = torch.nn.Parameter(s.clone())
    opt = ZOSGD([p], lr=0.3, manifold="orthant", sampler="sphere", estimator="central", queries=1, seed=0)
    opt.step(lambda: float(p.detach().sum()))
    seed, kept = opt.last_record
    g = kept[0][1] * get_sampler("sphere").draw(seed, kept[0][0], 1, [s]).part(0)
    assert torch.allclose(p.detach(), zosci.orthant.riemannian_step(s, s * g, lr=0.3), rtol=1e-14)


def test_shared_options_must_not_differ_per_group():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="mu: is shared"):
        ZOSGD([{"params": [a]}, {"params": [b], "mu": 0.1}])
    with pytest.raises(ValueError, match="positive orthant"):
        ZOSGD([torch.nn.Parameter(-torch.ones(2))], manifold="orthant")
    with pytest.raises(ValueError, match="closure"):
        ZOSGD([a]).step(None)


@pytest.mark.parametrize("make", [
    lambda ps: ZOSGD(ps, lr=0.05, estimator="central", seed=2),  # MeZO: the update rides the walk home
    lambda ps: ZOSGD(ps, lr=0.05, momentum=0.9, sampler="sphere", queries=3, seed=2),
    lambda ps: ZOAdam(ps, lr=0.05, sampler="dap", estimator="p3", queries=2, seed=2),
])
def test_records_replay_the_run_bit_for_bit(make):
    """MeZO's seed checkpoint: (seed, [(index, delta)]) per step rebuilds weights and state."""
    loss = _logistic_problem()
    w = torch.nn.Parameter(torch.zeros(10, dtype=torch.float64))
    opt = make([w])
    records = []
    for _ in range(8):
        opt.step(lambda: loss(w.detach()))
        records.append(opt.last_record)
    fresh = torch.nn.Parameter(torch.zeros(10, dtype=torch.float64))
    replay = make([fresh])
    for r in records:
        replay.apply_record(r)
    assert torch.equal(fresh.detach(), w.detach())
    for key, value in opt.state[w].items():
        other = replay.state[fresh][key]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
