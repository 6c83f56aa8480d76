"""The DAP paper's Poisson mesh problem: meshes, torch vs dolfinx, exact gradient, interpolation,
the node-carried Jacobian model (accuracy and measured variance reduction), the case run/resume."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from resume import from_template, killed_and_resumed

from zosci.cfd.jacobian_models import NodeCarried, recovered_gradient
from zosci.cfd.poisson import DolfinxPoisson, Locator, PoissonMesh, TorchPoisson, interior_nodes, unit_square
from zosci.cli import main
from zosci.hybrid import BlackBox
from zosci.solvers.errors import MeshError
from zosci.solvers.quality import signed_areas

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def problem():
    return PoissonMesh(10, 20, solver="torch")


def _moved(P, scale=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    return P.z0 + scale * torch.randn(P.z0.shape, generator=g, dtype=torch.float64)


def test_unit_square_is_the_structured_triangulation():
    m = unit_square(10)
    assert m.points.shape == (121, 2) and m.triangles.shape == (200, 3)
    assert (signed_areas(m.points, m.triangles) > 0).all()                     # CCW
    assert np.allclose(signed_areas(m.points, m.triangles), 0.005)
    assert len(interior_nodes(m)) == 81
    walls = m.boundaries["wall"]
    assert len(walls) == 40 and np.all(np.bincount(walls.ravel(), minlength=121)[interior_nodes(m)] == 0)
    on_edge = (m.points[np.unique(walls)] % 1.0 == 0).any(axis=1)
    assert on_edge.all()
    # the diagonal of square (0, 0) runs from (0, 0) to (0.1, 0.1), as MFEM's Mesh(n, n, "TRIANGLE")
    assert {0, 12} <= set(m.triangles[0]) and {0, 12} <= set(m.triangles[100])
    with pytest.raises(ValueError, match="n: must be an integer >= 2"):
        unit_square(1)


def test_torch_assembly_agrees_with_dolfinx():
    for n, scale in ((10, 0.02), (20, 0.0)):
        m = unit_square(n)
        x = m.points.copy()
        inner = interior_nodes(m)
        x[inner] += scale * np.random.default_rng(n).standard_normal((len(inner), 2))
        ut, ud = TorchPoisson(m)(x).numpy(), DolfinxPoisson(m)(x)
        assert np.abs(ut - ud).max() < 1e-10
        assert 0.07 < ud.max() < 0.075  # max of the exact solution is 0.0737
    bad = m.points.copy()
    bad[inner[0]] += 0.2  # pushes a node across its neighbours: inverted cells
    with pytest.raises(MeshError, match="inverted or degenerate"):
        TorchPoisson(m)(bad)


def test_exact_gradient_matches_central_differences(problem):
    P = problem
    z1 = _moved(P)
    P.rebase(z1)
    z = z1.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(P.loss(z), z)
    for seed in range(3):
        v = torch.randn(z1.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        h = 1e-6
        fd = float(P.loss(z1 + h * v) - P.loss(z1 - h * v)) / (2 * h)
        assert abs(fd - float((g * v).sum())) < 1e-6 * abs(fd) + 1e-12


def test_initial_loss_and_batched_loss(problem):
    P = problem
    P.rebase(P.z0)
    L0 = float(P.loss(P.z0))
    assert 1.0e-3 < L0 < 1.1e-3  # RMS difference of the 10x10 and 20x20 solutions
    zs = torch.stack([_moved(P, 1e-4, s) for s in range(5)])
    batched = P.loss(zs)
    single = torch.stack([P.loss(z) for z in zs])
    assert torch.allclose(batched, single, rtol=1e-12, atol=0)


def test_locator_interpolates_linear_fields_exactly(problem):
    P = problem
    z = _moved(P, 0.02)
    x = P.coords(z)
    P.rebase(z)
    lin = lambda p: 1 + 2 * p[..., 0] - 3 * p[..., 1]  # noqa: E731
    out = P.locator(x, lin(x))
    assert torch.allclose(out, lin(P.locator.targets), atol=1e-12)
    # batched meshes near the base: each target is found in its new cell
    xs = torch.stack([P.coords(z + 1e-3 * torch.randn_like(z)) for _ in range(3)])
    assert torch.allclose(P.locator(xs, lin(xs)), lin(P.locator.targets).expand(3, -1), atol=1e-12)
    far = P.coords(z + 0.3 * torch.randn_like(z))
    with pytest.raises(MeshError, match="left its neighbourhood"):
        Locator(P.coarse.triangles, P.fine.points).at(x.numpy()).weights(far)


def test_recovered_gradient_is_exact_for_linear_fields(problem):
    x = problem.coords(_moved(problem, 0.02))
    fields = torch.stack([2 * x[:, 0] - 3 * x[:, 1], x[:, 1]], dim=1)
    g = recovered_gradient(x, problem.coarse.triangles, fields)
    assert torch.allclose(g[:, :, 0], torch.tensor([2.0, -3.0], dtype=torch.float64).expand(len(x), 2), atol=1e-12)
    assert torch.allclose(g[:, :, 1], torch.tensor([0.0, 1.0], dtype=torch.float64).expand(len(x), 2), atol=1e-12)


def test_node_carried_model_approximates_the_solver_jacobian(problem):
    P = problem
    model = NodeCarried(P.coarse.triangles, P.coords)
    for z in (P.z0, _moved(P, 0.005)):
        J = torch.autograd.functional.jacobian(P.solve, z).reshape(121, -1)
        jv = model(z, P.solve(z))
        M = torch.stack([jv(e.view_as(z)) for e in torch.eye(z.numel(), dtype=torch.float64)], dim=1)
        rel = float((J - M).norm() / J.norm())
        assert rel < 0.15, rel                    # measured 0.09-0.10
        zero = float((J - 0 * M).norm() / J.norm())
        assert zero == 1.0                        # baseline: no model leaves all of J
    v = torch.randn_like(P.z0)
    assert torch.allclose(jv(2 * v), 2 * jv(v))  # linear in v


def _vjp_errors(P, z, q, trials, with_model):
    """Squared errors ||g_hat - g||^2 of the BlackBox VJP of the Poisson solver at z, cotangent = dL/du."""
    solver = TorchPoisson(P.coarse)
    fn = lambda zz: solver(P.coords(torch.as_tensor(zz)))  # noqa: E731
    model = NodeCarried(P.coarse.triangles, P.coords) if with_model else None
    box = BlackBox(fn, sampler="sphere", queries=q, mu=1e-7, seed=3, jacobian_model=model)
    P.rebase(z)
    u = P.solve(z).detach().requires_grad_(True)
    (ybar,) = torch.autograd.grad(P.loss_from(z, u), u)
    J = torch.autograd.functional.jacobian(P.solve, z).reshape(121, -1)
    truth = (ybar @ J).view_as(z)
    errors = []
    for _ in range(trials):
        zz = z.clone().requires_grad_(True)
        y = box(zz)
        (g,) = torch.autograd.grad(y, zz, ybar)
        errors.append(float(((g - truth) ** 2).sum()))
    residual = truth if model is None else truth - (ybar @ model.matrix(z, P.solve(z).detach())).view_as(z)
    return np.asarray(errors), float((residual ** 2).sum())


@pytest.mark.slow
def test_node_carried_model_cuts_the_vjp_variance_as_predicted(problem):
    """Sphere directions: E||g_hat - g||^2 = (d - 1)/q ||r||^2 with r the part ZO estimates (J^T ybar without
    the model, (J - J_model)^T ybar with it); measured within 4 standard errors, and the model's MSE far lower."""
    P = problem
    z = _moved(P, 0.005, seed=1)
    d, q, trials = z.numel(), 8, 40
    results = {}
    for with_model in (False, True):
        err, r2 = _vjp_errors(P, z, q, trials, with_model)
        predicted = (d - 1) / q * r2
        se = err.std(ddof=1) / math.sqrt(trials)
        assert abs(err.mean() - predicted) < 4 * se, (with_model, err.mean(), predicted, se)
        results[with_model] = err.mean()
    assert results[True] < 0.05 * results[False], results  # measured ~0.01 (||r|| 10x smaller)


CASE = """kind = "poisson_mesh"
name = "tiny-poisson"
output = "{output}"
[mesh]
solver = "torch"
[optimize]
queries = 4
steps = 6
checkpoint_every = 2
"""


def test_shipped_case_validates_and_bad_input_names_the_field():
    from zosci.cases import validate
    from zosci.config import read_toml
    from zosci.errors import ConfigError

    assert main(["validate", str(ROOT / "cases" / "poisson_mesh.toml")]) == 0
    raw, _ = read_toml(ROOT / "cases" / "poisson_mesh.toml")
    raw["mesh"]["fine"] = 5
    with pytest.raises(ConfigError, match="mesh.fine"):
        validate(raw)
    raw["mesh"]["fine"] = 20
    raw["optimize"]["method"] = "hybird"
    with pytest.raises(ConfigError, match="optimize.method.*did you mean 'hybrid'"):
        validate(raw)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_metrics(tmp_path):
    full, killed = killed_and_resumed(from_template(CASE, tmp_path), tmp_path, 3)
    assert (killed / "metrics.csv").read_text() == (full / "metrics.csv").read_text()
    rows = (full / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 + 1
    calls = [int(r.split(",")[1]) for r in rows[1:-1]]
    assert calls == [5 * k for k in range(1, 7)]  # forward + 4 queries per step
    for png in ("loss", "mesh"):
        assert (killed / f"{png}.png").exists()


@pytest.mark.slow
def test_airfoil_adaptation_loss_takes_the_node_carried_model():
    """The airfoil case's AdaptationLoss with jacobian_model="node_carried" (theta space, fields (n, 3)):
    each box linearizes it at its forward, and the hybrid gradient points along the true one."""
    from zosci.cfd.adapt import AdaptationLoss, MeshModes, fine_targets
    from zosci.solvers import PotentialFlow, naca_mesh

    coarse, fine = naca_mesh(n_airfoil=16, n_farfield=12), naca_mesh(n_airfoil=30, n_farfield=16)
    conds, cols = [(2.0, 0.3)], [0, 1, 2]
    targets = fine_targets(PotentialFlow(fine), conds, cols)
    modes = MeshModes(coarse, 4)
    with pytest.raises(ValueError, match="jacobian_model"):
        AdaptationLoss(PotentialFlow(coarse), modes, fine.points, targets, conds, cols, jacobian_model="carried")
    loss = AdaptationLoss(PotentialFlow(coarse), modes, fine.points, targets, conds, cols, sampler="sphere",
                          queries=32, mu=1e-4, jacobian_model="node_carried", seed=0)
    theta = torch.full((modes.dim,), 0.05, dtype=torch.float64, requires_grad=True)
    loss(theta).sum().backward()
    (box,) = loss.boxes
    assert box.jacobian_model is loss.model
    (jv,) = box.last.models  # the map the box built at its forward's point and output
    assert jv(torch.zeros(modes.dim, dtype=torch.float64)).shape == (len(coarse.points), 3)
    x = theta.detach().numpy()
    ref = np.array([(loss.value(x + 1e-4 * e).sum() - loss.value(x - 1e-4 * e).sum()) / 2e-4 for e in np.eye(modes.dim)])
    g = theta.grad.numpy()
    cos = float(g @ ref / (np.linalg.norm(g) * np.linalg.norm(ref)))
    assert cos > 0.5, cos


@pytest.mark.parametrize("method, sampler, per_step", [("plain", "sphere", 5), ("plain", "dap", 10), ("exact", "sphere", 1),
                                                       ("hybrid", "dap", 5)])
def test_case_counts_solver_calls_per_method(tmp_path, method, sampler, per_step):
    """Solver calls per step: plain ZO q + 1 (DAP with its pilot: 2 (q + 1)), hybrid 1 + q, exact 1."""
    case = tmp_path / "c.toml"
    case.write_text(CASE.format(output=tmp_path.as_posix()).replace("steps = 6", "steps = 3").replace(
        "[optimize]", f'[optimize]\nmethod = "{method}"\nsampler = "{sampler}"'))
    assert main(["run", str(case)]) == 0
    (run,) = tmp_path.glob("tiny-poisson-*")
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[1]) for r in rows[:3]] == [per_step * k for k in (1, 2, 3)]
