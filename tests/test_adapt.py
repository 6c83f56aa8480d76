"""Mesh adaptation: modes keep cells valid and are smooth, backtracking, loss decrease, ZO VJP, case run/resume."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from zosci.cfd.adapt import AdaptationLoss, Interpolator, MeshModes, adam_step, backtrack, fine_targets, graph_laplacian
from zosci.audit import reference_vjp
from zosci.cli import main
from zosci.hybrid import BlackBox

from resume import from_template, killed_and_resumed
from shared_data import MESHES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def meshes():
    from zosci.solvers import naca_mesh

    return naca_mesh(n_airfoil=16, n_farfield=12), naca_mesh(n_airfoil=30, n_farfield=16)


def test_modes_keep_cells_valid_and_are_smooth(meshes):
    coarse, _ = meshes
    modes = MeshModes(coarse, 8)
    gen = torch.Generator().manual_seed(0)
    boundary = coarse.node_type() > 0
    L = graph_laplacian(len(coarse.points), coarse.edges())
    for _ in range(20):
        theta = torch.rand(modes.dim, generator=gen, dtype=torch.float64) * 2 - 1
        theta *= 0.9 / modes.K ** 0.5  # ||Phi Theta||_i < 1 for most nodes
        x = modes.coords_np(theta)
        assert np.array_equal(x[boundary], coarse.points[boundary])  # boundary fixed
        assert modes.area_ratio(theta) > 0
        coarse.with_points(x)  # raises MeshError on an inverted cell
    # smooth: Rayleigh quotient d^T L d / d^T d of a mode's (unscaled) shape << that of noise
    phi = modes.basis.numpy() / (0.5 * np.where(np.isfinite(modes.h), modes.h, 1))[:, None]
    noise = np.where(boundary, 0.0, np.random.default_rng(0).standard_normal(len(phi)))
    rq = lambda d: float(d @ (L @ d) / (d @ d))  # noqa: E731
    ratios = [rq(phi[:, k]) / rq(noise) for k in range(modes.K)]
    assert ratios[0] < 0.05 and max(ratios) < 0.3, ratios


def test_sliding_boundary_keeps_the_airfoil_and_the_trailing_edge(meshes):
    from zosci.solvers.mesh import airfoil_geometry

    coarse, _ = meshes
    modes = MeshModes(coarse, 8, boundary="slide")
    assert np.allclose(modes.coords_np(np.zeros(modes.dim)), coarse.points, atol=1e-12)
    theta = torch.full((modes.dim,), 0.3, dtype=torch.float64)
    x = modes.coords_np(theta)
    ntype, te = coarse.node_type(), airfoil_geometry(coarse)["te"]
    assert np.array_equal(x[te], coarse.points[te])  # Kutta: the TE node stays
    foil = np.flatnonzero(ntype == 1)
    assert np.abs(x[foil] - coarse.points[foil]).max() > 1e-4  # airfoil nodes do move ...
    # ... but stay on the airfoil: within a small distance of the original polyline
    seg = coarse.points[coarse.boundaries["airfoil"]]
    a, b = seg[:, 0], seg[:, 1]
    t = np.clip(np.einsum("pij,ij->pi", x[foil][:, None] - a, b - a) / np.einsum("ij,ij->i", b - a, b - a), 0, 1)
    dist = np.linalg.norm(x[foil][:, None] - (a + t[..., None] * (b - a)), axis=2).min(axis=1)
    assert dist.max() < 2e-3, dist.max()
    far = np.flatnonzero(ntype == 2)
    assert np.allclose(np.linalg.norm(x[far], axis=1), np.linalg.norm(coarse.points[far], axis=1))
    assert modes.area_ratio(theta) > 0
    # coords is differentiable through the sliding map
    th = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(modes.coords(th)[foil].sum(), th)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_min_angle_guard_shortens_a_step(meshes):
    modes = MeshModes(meshes[0], 8, boundary="slide")
    zero = torch.zeros(modes.dim, dtype=torch.float64)
    big = torch.full((modes.dim,), 5.0, dtype=torch.float64)
    new, t, _ = backtrack(modes, zero, big, min_area_ratio=0.01, min_angle=10.0)
    assert modes.min_angle(new) >= 10.0 and modes.area_ratio(new) >= 0.01


def test_backtracking_shortens_an_inverting_step(meshes):
    modes = MeshModes(meshes[0], 8)
    zero = torch.zeros(modes.dim, dtype=torch.float64)
    big = torch.full((modes.dim,), 20.0, dtype=torch.float64)
    assert modes.area_ratio(big) < 0  # the full step inverts cells
    new, t, tries = backtrack(modes, zero, big, min_area_ratio=0.3)
    assert 0 < t < 1 and tries > 1 and modes.area_ratio(new) >= 0.3
    assert modes.area_ratio(zero + 2 * t * big) < 0.3  # the step before was rejected
    small = big * 1e-4
    assert backtrack(modes, zero, small)[1] == 1.0


def test_interpolation_is_exact_for_linear_fields(meshes):
    coarse, fine = meshes
    f = lambda x: 2 * x[:, :1] - 3 * x[:, 1:] + 1  # noqa: E731
    interp = Interpolator(coarse.triangles, fine.points)
    x = torch.as_tensor(coarse.points)
    inside = interp.inside(coarse.points)
    out = interp(x, f(x))
    assert inside.mean() > 0.9 and not inside.all()  # fine nodes on the curved boundaries lie outside
    assert torch.allclose(out[inside], f(torch.as_tensor(fine.points))[inside], atol=1e-9)
    lo, hi = f(x).min(), f(x).max()
    assert (out[~inside] >= lo).all() and (out[~inside] <= hi).all()  # outside: clamped, no overshoot


def _loss(meshes, **kw):
    from zosci.solvers import PotentialFlow

    coarse, fine = meshes
    conds, cols = [(2.0, 0.3)], [0, 1, 2]
    targets = fine_targets(PotentialFlow(fine), conds, cols)
    modes = MeshModes(coarse, 4)
    return AdaptationLoss(PotentialFlow(coarse), modes, fine.points, targets, conds, cols, **kw), modes


def test_adaptation_steps_reduce_the_loss(meshes):
    loss, modes = _loss(meshes, sampler="sphere", queries=8, seed=1)
    theta = torch.zeros(modes.dim, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.05)
    first = float(loss.value(theta.detach()).sum())
    for _ in range(6):
        adam_step(loss, theta, opt)
    last = float(loss.value(theta.detach()).sum())
    assert last < 0.99 * first, (first, last)
    assert loss.solver_calls == 2 + 6 * (1 + 8)
    assert modes.area_ratio(theta.detach()) >= 0.2


def test_blackbox_vjp_over_the_solver_agrees_with_central_differences(meshes):
    loss, modes = _loss(meshes)
    fn = loss.fns[0]  # theta -> coarse fields (the real solver)
    theta = torch.full((modes.dim,), 0.05, dtype=torch.float64)
    ybar = torch.as_tensor(np.random.default_rng(0).standard_normal(fn(theta.numpy()).shape))
    ref = reference_vjp(fn, theta, ybar, "central", h=1e-4)
    box = BlackBox(fn, sampler="sphere", queries=32, mu=1e-4, numpy_io=True, seed=0)
    x = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(box(x), x, ybar)
    cos = float(g @ ref / (g.norm() * ref.norm()))
    assert cos > 0.5, cos


CASE = """kind = "mesh_adaptation"
name = "tiny-adapt"
output = "{output}"
[mesh]
coarse_airfoil = 10
coarse_farfield = 10
fine_airfoil = 20
fine_farfield = 12
[flow]
aoa = [2.0]
mach = [0.2]
[adapt]
modes = 3
steps = 4
queries = 2
checkpoint_every = 2
"""


def test_shipped_cases_validate(capsys):
    assert main(["validate", str(ROOT / "cases" / "naca0012_mesh_adaptation.toml")]) == 0
    # the CFD-GCN-mesh variant reads ../shared/data/meshes: valid beside it, a clear error without it
    have_meshes = os.path.isdir(MESHES)
    assert main(["validate", str(ROOT / "cases" / "naca0012_mesh_adaptation_cfdgcn.toml")]) == (0 if have_meshes else 2)
    if not have_meshes:
        assert "mesh.coarse_file" in capsys.readouterr().err
    bad = ROOT / "cases" / "naca0012_mesh_adaptation.toml"
    from zosci.cases import validate
    from zosci.config import read_toml
    from zosci.errors import ConfigError

    raw, _ = read_toml(bad)
    raw["flow"]["mach"] = [0.3]
    with pytest.raises(ConfigError, match="flow.mach"):
        validate(raw)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_metrics(tmp_path):
    full, killed = killed_and_resumed(from_template(CASE, tmp_path), tmp_path, 3)
    assert (killed / "metrics.csv").read_text() == (full / "metrics.csv").read_text()
    assert len((full / "metrics.csv").read_text().splitlines()) == 1 + 4 + 1
    for png in ("loss", "mesh_before", "mesh_after", "field_fine"):
        assert (killed / f"{png}.png").exists()
