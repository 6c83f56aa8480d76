"""Navier-Stokes solver: Kovasznay rates, airfoil physics, warm start, failures."""
import math
import os
import pickle

import numpy as np
import pytest

from zosci.solvers import MeshError, NavierStokes, SolverError, naca_mesh

from shared_data import MESHES, needs_meshes, su2  # noqa: F401


@pytest.fixture(scope="module")
def sym():
    return NavierStokes(naca_mesh("0012", n_airfoil=30, radius=15))


def _kovasznay_errors(n, re=40.0):
    import dolfinx
    import ufl
    from mpi4py import MPI

    from zosci.solvers.fem import newton_solve, newton_solver
    from zosci.solvers.navier_stokes import ns_form, taylor_hood

    lam = re / 2 - math.sqrt(re**2 / 4 + 4 * math.pi**2)
    dm = dolfinx.mesh.create_rectangle(MPI.COMM_SELF, [np.array([-0.5, -0.5]), np.array([1.0, 1.5])], [n, n])
    W = taylor_hood(dm)
    V, _ = W.sub(0).collapse()
    Q, _ = W.sub(1).collapse()
    u_ex = dolfinx.fem.Function(V)
    u_ex.interpolate(lambda x: np.vstack([1 - np.exp(lam * x[0]) * np.cos(2 * np.pi * x[1]),
                                          lam / (2 * np.pi) * np.exp(lam * x[0]) * np.sin(2 * np.pi * x[1])]))
    dm.topology.create_connectivity(1, 2)
    facets = dolfinx.mesh.exterior_facet_indices(dm.topology)
    dofs = dolfinx.fem.locate_dofs_topological((W.sub(0), V), 1, facets)
    corner = dolfinx.fem.locate_dofs_geometrical(
        (W.sub(1), Q), lambda x: np.isclose(x[0], -0.5) & np.isclose(x[1], -0.5))
    p_ex = dolfinx.fem.Function(Q)
    p_ex.interpolate(lambda x: 0.5 * (1 - np.exp(2 * lam * x[0])))
    bcs = [dolfinx.fem.dirichletbc(u_ex, dofs, W.sub(0)), dolfinx.fem.dirichletbc(p_ex, corner, W.sub(1))]
    w = dolfinx.fem.Function(W)
    problem = dolfinx.fem.petsc.NonlinearProblem(ns_form(w, dolfinx.fem.Constant(dm, 1.0 / re)), w, bcs)
    newton_solve(newton_solver(problem, rtol=1e-12, atol=1e-12), w, "kovasznay")
    X = ufl.SpatialCoordinate(dm)
    ue = ufl.as_vector([1 - ufl.exp(lam * X[0]) * ufl.cos(2 * math.pi * X[1]),
                        lam / (2 * math.pi) * ufl.exp(lam * X[0]) * ufl.sin(2 * math.pi * X[1])])
    pe = 0.5 * (1 - ufl.exp(2 * lam * X[0]))
    u, p = ufl.split(w)
    area = 1.5 * 2.0
    pm = dolfinx.fem.assemble_scalar(dolfinx.fem.form((p - pe) * ufl.dx)) / area  # compare zero-mean pressures

    def norm(e):
        return math.sqrt(dolfinx.fem.assemble_scalar(dolfinx.fem.form(ufl.inner(e, e) * ufl.dx)))

    return norm(u - ue), norm(ufl.grad(u - ue)), norm(p - pe - pm)


@pytest.mark.slow
def test_kovasznay_rates():
    """Taylor-Hood P2/P1, Re=40: |u|_L2 ~ h^3, |grad u|_L2 ~ h^2, |p|_L2 ~ h^2 over 3 refinements."""
    errs = np.array([_kovasznay_errors(n) for n in (6, 12, 24, 48)])
    rates = np.log2(errs[:-1] / errs[1:])
    assert np.all(rates[-2:, 0] > 2.7), rates
    assert np.all(rates[-2:, 1] > 1.8), rates
    assert np.all(rates[-2:, 2] > 1.8), rates
    assert errs[-1, 0] < 3e-4


def test_symmetry_and_drag(sym):
    r0 = sym.solve(aoa=0.0, reynolds=100.0)
    assert r0.info["warm_start"] is False
    assert abs(r0.cl) < 1e-8 and r0.cd > 0.1
    assert r0.names == ("u", "v", "p", "Cp") and r0.fields.shape == (len(sym.mesh.points), 4)
    wall = sym.mesh.marker_nodes("airfoil")
    assert np.abs(r0.fields[wall, :2]).max() < 1e-10  # no slip
    rp = sym.solve(aoa=4.0, reynolds=100.0)
    assert rp.info["warm_start"] is True and rp.info["newton_iterations"] < r0.info["newton_iterations"]
    rm = sym.solve(aoa=-4.0, reynolds=100.0)
    assert rp.cl > 0.05 and abs(rp.cl + rm.cl) < 1e-6 * rp.cl and abs(rp.cd - rm.cd) < 1e-7
    # higher Reynolds number: less drag, and the warm start carries over
    r2 = sym.solve(aoa=4.0, reynolds=300.0)
    assert r2.cd < rp.cd


def test_failure_keeps_solver_usable(sym):
    good = sym.solve(aoa=2.0, reynolds=50.0)
    with pytest.raises(SolverError, match="reynolds"):
        sym.solve(aoa=2.0, reynolds=-1.0)
    bad = sym.mesh.points.copy()
    t = sym.mesh.triangles[0]
    bad[t[0]] = bad[t[1]]
    with pytest.raises(MeshError, match=r"cell \d+ is (inverted|degenerate)"):
        sym.solve(aoa=2.0, reynolds=50.0, coords=bad)
    fragile = NavierStokes(sym.mesh, max_it=1)
    with pytest.raises(SolverError, match="did not converge"):
        fragile.solve(aoa=2.0, reynolds=200.0)
    again = sym.solve(aoa=2.0, reynolds=50.0)
    assert again.cl == pytest.approx(good.cl, rel=1e-7)
    s2 = pickle.loads(pickle.dumps(sym))
    assert s2.solve(aoa=2.0, reynolds=50.0).cl == pytest.approx(good.cl, rel=1e-7)


def test_moving_nodes_is_smooth(sym):
    mesh = sym.mesh
    x = mesh.points
    w = np.exp(-np.sum((x - [0.5, 0.2]) ** 2, axis=1) / 0.02)
    w[np.unique(np.concatenate(list(mesh.boundaries.values())).ravel())] = 0
    d = w[:, None] * np.array([0.6, 0.8])

    def cl(t):
        r = sym.solve(aoa=3.0, reynolds=100.0, coords=x + t * d)
        return np.array([r.cl, r.cd])

    h = 2e-3
    g1 = (cl(h) - cl(-h)) / (2 * h)
    g2 = (cl(h / 2) - cl(-h / 2)) / h
    assert np.all(np.abs(g1) > 1e-5)
    assert np.all(np.abs(g1 - g2) < 2e-3 * np.abs(g1)), (g1, g2)


@needs_meshes
@pytest.mark.slow
def test_cfd_gcn_meshes_agree():
    r = {n: NavierStokes(su2(n)).solve(aoa=4.0, reynolds=100.0) for n in ("coarse", "fine")}
    assert abs(r["coarse"].cl / r["fine"].cl - 1) < 0.03
    assert abs(r["coarse"].cd / r["fine"].cd - 1) < 0.04
