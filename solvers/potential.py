"""Steady compressible full-potential flow around an airfoil (inviscid, sub- and transonic).

Nondimensional, free-stream speed 1, density 1, gamma = 1.4. Velocity
u = grad(psi) + Gamma * grad(theta)/(2 pi), theta = angle around the vortex centre
(quarter chord, inside the airfoil), psi single-valued P1: only grad(theta) enters,
so no wake cut is needed. Isentropic density

    rho(q^2) = (1 + (g-1)/2 M^2 (1 - q^2))^(1/(g-1)),

weak form  F(psi, Gamma; v) = int rho(|u|^2) u . grad v dx = 0  for v = 0 on the far field
(slip wall rho u.n = 0 on the airfoil is natural); far field Dirichlet psi = x cos(a) + y sin(a),
so the far-field velocity is free stream + vortex. grad(theta)/(2 pi) enters per cell as its value
at the centroid (a DG0 field), so every integrand is piecewise constant and one quadrature point is
exact (FFCx estimated degree 11 for F and 14 for its Jacobian with the vortex as a function of x,
about 10x the work, for cl changes of at most 0.15 %: BENCHMARKS.md).

Kutta condition (discrete): the tangential velocity (towards the trailing edge) in the two cells
touching the TE through an airfoil edge is equal on upper and lower side,
k(psi, Gamma) = u_up . t_up - u_lo . t_lo = a . psi + b Gamma = 0 (linear).

Newton on (psi, Gamma) with the Kutta row in the Jacobian: the bordered system

    [ J  c ] [ dpsi   ]     [ F ]
    [ a' b ] [ dGamma ] = - [ k ],     J = dF/dpsi, c = dF/dGamma,

is solved by block elimination with one LU of J and two back-substitutions:
J y1 = F, J y2 = c, dGamma = (a.y1 - k) / (b - a.y2), dpsi = -(y1 + dGamma y2).
At M = 0, F is linear and J is the Laplacian: one step from any state is exact, and the LU of J
depends on the node positions only, so it is kept until the nodes move. For M > 0 Newton starts
from the M = 0 solution, with backtracking on |F| (a step that does not reduce |F| is halved).

Transonic: where plain Newton meets a supersonic cell or converges above Mc (option mach_crit,
0.95), Newton is run with the upwind artificial density rho~ = rho - nu (rho - rho_upwind),
nu ~ C max(0, 1 - Mc^2/M_loc^2) (option upwind = C, 3.0; continuously differentiable at Mc, see
`switch`), taking in each cell the larger nu of the cell and its upwind neighbour (the shock-point
operator: without it the first subsonic cell behind a shock is not upwinded and Newton stalls at
shocks), see `artificial_density_form` (still exact Newton). It starts directly from the M = 0
state at the target Mach, with a non-monotone line search; no continuation in Mach is needed.
nu = 0 where M_loc <= Mc, so purely subsonic solves take the plain path only.

Validity: the isentropic full potential is not physical for strong shocks. A converged state whose
largest cell Mach number exceeds max_mach (option, 1.4) is refused with SolverError, and so is, at
once, a condition whose M = 0 suction peak Cp0, mapped by Karman-Tsien to the target Mach, is beyond
vacuum (see `_karman_tsien_peak`).

Fail fast: all Newton iterations of one solve share a budget (option max_newton, 30; a converged
subsonic M = 0.5 solve takes 4-6, a transonic one 5-16); Newton fails early when it stalls or when an
iterate's peak Mach stays far above max_mach (see `_newton`). Errors name the stage (before Newton /
plain / artificial density), the Mach numbers (estimated, last iterate, converged), the residuals
and the cells at the density floor.

Outputs per node: u, v, Cp, rho; cl, cd from the surface pressure of the cells on the
airfoil (per unit chord, chord = x-extent of the airfoil marker). Cp = (rho^g - 1)/(g M^2/2),
Cp = 1 - q^2 at M = 0.
"""
import math

import numpy as np

from .errors import SolverError
from .fem import DolfinxMesh, LazySolver, Result
from .mesh import airfoil_geometry

GAMMA = 1.4
STALL_WINDOW = 6  # artificial-density Newton fails after this many iterations without a new best |F| ...
SHORT_STEPS = 5  # ... or this many steps in a row of length <= 1/16
APRIORI_MAX_MACH = 1.4  # the Karman-Tsien refusal is used up to this max_mach (calibrated there, see below)
PEAK_MARGIN, PEAK_AFTER = 0.2, 4  # artificial-density Newton fails once an iterate after the 4th exceeds max_mach + 0.2
NONMONOTONE = 5  # artificial-density line search: a step must reduce |F| below the largest of the last 5
SWITCH_WIDTH = 0.02  # M_loc^2 - Mc^2 over which the artificial-density switch turns on smoothly
RHO_FLOOR = 1e-3  # floor on the density base; reaching it (vacuum) is reported as a failure
NAMES = ("u", "v", "Cp", "rho")


def density(q2, mach, gamma=GAMMA):
    """UFL isentropic density rho(q^2) with the base floored at RHO_FLOOR (reported if reached)."""
    import ufl

    base = 1 + 0.5 * (gamma - 1) * mach**2 * (1 - q2)
    return ufl.max_value(base, RHO_FLOOR) ** (1.0 / (gamma - 1))


def full_potential_form(psi, v, mach, extra_velocity=None, source=None, degree=None):
    """Residual F(psi; v) = int rho(|u|^2) u.grad(v) dx - int source v dx, u = grad psi + extra.

    degree: quadrature degree (None: the form compiler's estimate)."""
    import ufl

    dx = ufl.dx if degree is None else ufl.dx(metadata={"quadrature_degree": degree})
    u = ufl.grad(psi) if extra_velocity is None else ufl.grad(psi) + extra_velocity
    F = density(ufl.dot(u, u), mach) * ufl.dot(u, ufl.grad(v)) * dx
    if source is not None:
        F = F - source * v * dx
    return F


def local_mach2(q2, mach, gamma=GAMMA):
    """UFL local Mach number squared M^2 q^2 / (1 + (g-1)/2 M^2 (1 - q^2)) (0 at M = 0)."""
    import ufl

    base = 1 + 0.5 * (gamma - 1) * mach**2 * (1 - q2)
    return mach**2 * q2 / ufl.max_value(base, RHO_FLOOR)


def switch(q2, mach, mach_crit, coef, width=SWITCH_WIDTH):
    """Artificial-density switch nu = coef (1 - Mc^2/M_loc^2) s/(s + w), s = max(0, M_loc^2 - Mc^2):
    0 wherever M_loc <= Mc, continuously differentiable there (Newton does not cycle on a kink),
    within w/s of the classic coef max(0, 1 - Mc^2/M_loc^2) above."""
    import ufl

    m2 = local_mach2(q2, mach)
    s = ufl.max_value(m2 - mach_crit**2, 0.0)
    return coef * s / ufl.max_value(m2, mach_crit**2) * s / (s + width)


def artificial_density_form(psi, v, mach, extra_velocity, mach_crit, coef, degree=2):
    """Upwind artificial-density correction (subtract it from `full_potential_form`).

    In every cell K the density is replaced by rho~_K = rho_K - nu_K sum_f w_f (rho_K - rho_f),
    summed over the inflow edges f of K (u_K . n_f < 0), rho_f the density of the cell across f,
    w_f = |u_K . n_f| |f| / S_K with S_K = sum_inflow |u . n| |f| = 1/2 sum_edges |u x e| (exact
    for a triangle), so sum_f w_f = 1: rho~ = (1 - nu) rho_K + nu rho_upwind, a first-order
    upwind difference rho - nu h (u/|u|) . grad rho (Holst / Jameson artificial density).
    For P1, int_K rho~ u . grad v = int_K rho u . grad v - |K| nu_K (u_K . grad v_K) sum_f ...,
    written as an interior-facet integral so that UFL differentiates it exactly (Newton).
    nu = 0 (M_loc <= Mc everywhere) gives back the plain form.
    """
    import ufl

    u = ufl.grad(psi) + extra_velocity
    n = ufl.FacetNormal(psi.function_space.mesh)
    J = ufl.Jacobian(psi.function_space.mesh)
    vol = ufl.CellVolume(psi.function_space.mesh)

    def one_side(s, o):
        us = u(s)
        e1 = ufl.as_vector([J(s)[0, 0], J(s)[1, 0]])
        e2 = ufl.as_vector([J(s)[0, 1], J(s)[1, 1]])
        e3 = e2 - e1

        def cross(a, b):
            return a[0] * b[1] - a[1] * b[0]

        S = 0.5 * (abs(cross(us, e1)) + abs(cross(us, e2)) + abs(cross(us, e3)))
        q2s, q2o = ufl.dot(us, us), ufl.dot(u(o), u(o))
        inflow = ufl.max_value(-ufl.dot(us, n(s)), 0.0)
        ms = mach(s) if isinstance(mach, ufl.Coefficient) else mach  # a field must be taken from one side
        # shock-point operator: the larger switch of K and its upwind neighbour, so that the first
        # subsonic cell behind a shock is still upwinded (without it Newton stalls at shocks)
        nu = ufl.max_value(switch(q2s, ms, mach_crit, coef), switch(q2o, ms, mach_crit, coef))
        drho = density(q2s, ms) - density(q2o, ms)
        return nu * vol(s) * ufl.dot(us, ufl.grad(v)(s)) * inflow * drho / ufl.max_value(S, 1e-14)

    return (one_side("+", "-") + one_side("-", "+")) * ufl.dS(metadata={"quadrature_degree": degree})


def gradient_operators(points, triangles):
    """(m, 2, 3) matrices G with grad f = G @ f[tri] for the P1 interpolant on every triangle, and areas."""
    p = points[triangles]
    d1, d2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    det = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    # grad = [[d2y, -d1y], [-d2x, d1x]] / det @ [f1 - f0, f2 - f0]
    a = np.stack([np.stack([d2[:, 1], -d1[:, 1]], axis=1), np.stack([-d2[:, 0], d1[:, 0]], axis=1)], axis=1)
    a = a / det[:, None, None]
    G = np.concatenate([-a.sum(axis=2, keepdims=True), a], axis=2)
    return G, 0.5 * det


def vortex_velocity(points, center):
    """grad(theta)/(2 pi) around `center`: the velocity of a unit (CCW) point vortex."""
    r = points - center
    return np.column_stack([-r[:, 1], r[:, 0]]) / (2 * math.pi * np.einsum("ij,ij->i", r, r))[:, None]


def _edge_cells(mesh, name):
    """For each edge of marker `name`: the adjacent triangle and the edge's nodes in that cell's CCW order."""
    tri = mesh.triangles
    lookup = {}
    for c, t in enumerate(tri):
        for k in range(3):
            lookup[(int(t[k]), int(t[(k + 1) % 3]))] = c
    cells, ordered = [], []
    for a, b in mesh.boundaries[name]:
        if (a, b) in lookup:
            cells.append(lookup[(a, b)]), ordered.append((a, b))
        elif (b, a) in lookup:
            cells.append(lookup[(b, a)]), ordered.append((b, a))
        else:
            raise SolverError(f"'{name}' edge ({a},{b}) is not an edge of any cell")
    return np.array(cells), np.array(ordered)


def pressure_forces(points, edges, cp_cells, chord):
    """Force coefficient vector (Cx, Cy) = sum_e Cp_e n_e L_e / c, n pointing out of the fluid."""
    d = points[edges[:, 1]] - points[edges[:, 0]]
    return (cp_cells[:, None] * np.column_stack([d[:, 1], -d[:, 0]])).sum(axis=0) / chord


def _thermo(q2, mach):
    """rho, Cp and the density base 1 + (g-1)/2 M^2 (1 - q^2) for speeds squared q2."""
    base = 1 + 0.5 * (GAMMA - 1) * mach**2 * (1 - q2)
    rho = np.maximum(base, RHO_FLOOR) ** (1 / (GAMMA - 1))
    cp = 1 - q2 if mach == 0 else (rho**GAMMA - 1) / (0.5 * GAMMA * mach**2)
    return rho, cp, base


class _NewtonFailed(SolverError):
    """One Newton run failed after `iterations`; the solve may still succeed another way."""

    def __init__(self, message, iterations):
        super().__init__(message)
        self.iterations = iterations


class _LU:
    """A PETSc matrix for a bilinear form (Dirichlet rows/columns -> identity) and its kept LU."""

    def __init__(self, form, bcs, package):
        from dolfinx.fem.petsc import create_matrix
        from mpi4py import MPI
        from petsc4py import PETSc

        self.form, self.bcs = form, bcs
        self.A = create_matrix(form)
        self.ksp = PETSc.KSP().create(MPI.COMM_SELF)
        self.ksp.setOperators(self.A)
        self.ksp.setType("preonly")
        pc = self.ksp.getPC()
        pc.setType("lu")
        pc.setFactorSolverType(package)
        pc.setFactorOrdering("amd")  # fewest fill-in on these 2-D meshes (nd: +50 % time, rcm: 10x)
        self.pc = pc
        self.x, self.b = self.A.createVecRight(), self.A.createVecLeft()

    def factor(self):
        """Assemble at the current coefficients and factorise (symbolic analysis reused)."""
        from dolfinx.fem.petsc import assemble_matrix

        self.A.zeroEntries()
        assemble_matrix(self.A, self.form, self.bcs)
        self.A.assemble()
        try:
            self.pc.setUp()
        except Exception as e:  # PETSc.Error: zero pivot, out of memory
            raise _NewtonFailed(f"LU factorisation failed ({e})", 0) from None

    def solve(self, rhs):
        self.b.array[:] = rhs
        self.ksp.solve(self.b, self.x)
        return self.x.array.copy()


class _Forms:
    """Compiled residual F, Jacobian J = dF/dpsi (in its LU) and c = dF/dGamma of one discretisation."""

    def __init__(self, F, b, package):
        import dolfinx
        import ufl

        self.F = dolfinx.fem.form(F)
        self.C = dolfinx.fem.form(ufl.derivative(F, b.gam, b.one))
        self.lu = _LU(dolfinx.fem.form(ufl.derivative(F, b.psi, ufl.TrialFunction(b.V))), [b.bc], package)


class _Built:
    pass


class PotentialFlow(LazySolver):
    """Full-potential solver: `PotentialFlow(mesh_or_path).solve(aoa=deg, mach=M, coords=None)`.

    Options: newton_tol (relative Newton step at which to stop), max_newton (Newton iterations per
    solve, all attempts together), mach_crit and upwind (transonic), max_mach (largest cell Mach
    number of an accepted solution: isentropic shocks beyond it are not physical), lu (the PETSc LU
    package).
    """

    def __init__(self, mesh, newton_tol=1e-9, max_newton=30, mach_crit=0.95, upwind=3.0, max_mach=1.4, lu="petsc"):
        if max_newton < 2:
            raise SolverError(f"max_newton={max_newton}: give at least 2 Newton iterations")
        if not max_mach > 1.0:
            raise SolverError(f"max_mach={max_mach}: give the largest accepted cell Mach number, > 1 (e.g. 1.4)")
        super().__init__(mesh, newton_tol=newton_tol, max_newton=max_newton, mach_crit=mach_crit, upwind=upwind,
                         max_mach=max_mach, lu=lu)

    def _build(self):
        import dolfinx
        import ufl

        opt = self.options
        b = _Built()
        mesh = self.mesh
        geo = airfoil_geometry(mesh)
        b.chord, b.center = geo["chord"], geo["center"]
        b.dmesh = DolfinxMesh(mesh)
        dm = b.dmesh.dm
        b.V = dolfinx.fem.FunctionSpace(dm, ("CG", 1))
        R = dolfinx.fem.FunctionSpace(dm, ("DG", 0))  # Gamma as a constant field, to differentiate by it
        b.psi, b.psi_D = dolfinx.fem.Function(b.V), dolfinx.fem.Function(b.V)
        b.gam, b.one = dolfinx.fem.Function(R), dolfinx.fem.Function(R)
        b.one.x.array[:] = 1.0
        b.mach = dolfinx.fem.Function(R)  # free-stream Mach as a constant field, to differentiate by it
        b.g = dolfinx.fem.Function(dolfinx.fem.VectorFunctionSpace(dm, ("DG", 0)))  # vortex velocity per cell
        b.g_dofs = b.g.function_space.dofmap.list.array.reshape(-1)  # block dof of every dolfinx cell
        g = b.g
        v = ufl.TestFunction(b.V)
        far = dolfinx.fem.locate_dofs_topological(b.V, 1, b.dmesh.facets("farfield"))
        b.far = np.asarray(far, dtype=np.int64)
        b.bc = dolfinx.fem.dirichletbc(b.psi_D, far)
        F = full_potential_form(b.psi, v, b.mach, b.gam * g, degree=0)  # piecewise-constant integrand: exact
        b.plain = _Forms(F, b, opt["lu"])
        # transonic: the same form plus the artificial density (used once M_loc > Mc somewhere)
        b.mach_crit = dolfinx.fem.Constant(dm, float(opt["mach_crit"]))
        b.upwind = dolfinx.fem.Constant(dm, float(opt["upwind"]))
        Fs = F - artificial_density_form(b.psi, v, b.mach, b.gam * g, b.mach_crit, b.upwind, degree=0)
        b.artificial = _Forms(Fs, b, opt["lu"])
        # M = 0: the Laplacian (J at M = 0) and its LU, kept until the nodes move
        lap = ufl.inner(ufl.grad(ufl.TrialFunction(b.V)), ufl.grad(v)) * ufl.dx(metadata={"quadrature_degree": 0})
        b.laplace = _LU(dolfinx.fem.form(lap), [b.bc], opt["lu"])
        b.geometry_coords = None
        b.transonic = False
        b.dof = b.dmesh.dofs_of_nodes(b.V)
        b.tri_dofs = b.dof[mesh.triangles]
        b.n_dofs = len(b.psi.x.array)
        # Kutta: the two airfoil edges at the TE node and their cells
        te = geo["te"]
        b.wall_cells, b.wall_edges = _edge_cells(mesh, "airfoil")
        at_te = np.flatnonzero((b.wall_edges == te).any(axis=1))
        if len(at_te) != 2:
            raise SolverError(f"trailing-edge node {te} has {len(at_te)} airfoil edges; a sharp TE (2 edges) is required")
        b.te = te
        b.te_cells = b.wall_cells[at_te]
        b.te_other = np.where(b.wall_edges[at_te, 0] == te, b.wall_edges[at_te, 1], b.wall_edges[at_te, 0])
        return b

    # --------------------------------------------------------------- pieces
    def _geometry(self):
        """After the nodes moved: the cells' vortex velocity and gradient operators, the Kutta row, and a
        stale Laplacian LU."""
        b = self.built
        x = b.dmesh.coords
        if b.geometry_coords is x:
            return
        b.cell_G, b.cell_area = gradient_operators(x, self.mesh.triangles)  # mesh cell order
        b.cell_vortex = vortex_velocity(x[self.mesh.triangles].mean(axis=1), b.center)
        cell_g = vortex_velocity(x[b.dmesh.cell_nodes].mean(axis=1), b.center)
        b.g.x.array.reshape(-1, 2)[b.g_dofs] = cell_g
        tri = self.mesh.triangles[b.te_cells]
        G, _ = gradient_operators(x, tri)
        t = x[b.te] - x[b.te_other]
        t /= np.linalg.norm(t, axis=1)[:, None]
        tg = np.einsum("ij,ijk->ik", t, G)  # t . grad as weights on the 3 nodes of each cell
        w = vortex_velocity(x[tri].mean(axis=1), b.center)
        a = np.zeros(b.n_dofs)
        np.add.at(a, b.dof[tri[0]], tg[0])
        np.add.at(a, b.dof[tri[1]], -tg[1])
        b.kutta_ab = (a, float(t[0] @ w[0] - t[1] @ w[1]))
        b.laplace.factor()
        b.geometry_coords = x

    def _kutta(self, psi, gamma):
        a, bk = self.built.kutta_ab
        return float(a @ psi + bk * gamma)

    def _set_state(self, psi, gamma):
        b = self.built
        b.psi.x.array[:] = psi
        b.gam.x.array[:] = gamma

    def _vector(self, form):
        """Assemble a linear form at the current state; Dirichlet rows set to 0 (psi already meets the BC)."""
        import dolfinx

        out = np.zeros(self.built.n_dofs)
        dolfinx.fem.assemble_vector(out, form)
        out[self.built.far] = 0.0
        return out

    def _cell_velocity(self, psi, gamma):
        """Velocity, grad psi and area of every cell (mesh order), from the operators of `_geometry`."""
        b = self.built
        grad = np.einsum("mij,mj->mi", b.cell_G, psi[b.tri_dofs])
        return grad + gamma * b.cell_vortex, grad, b.cell_area

    def _bases(self, psi, gamma, mach):
        """Density base 1 + (g-1)/2 M^2 (1 - q^2) per cell (centroid velocity)."""
        u, _, _ = self._cell_velocity(psi, gamma)
        return 1 + 0.5 * (GAMMA - 1) * mach**2 * (1 - np.einsum("ij,ij->i", u, u))

    def _bordered_step(self, lu, c_form, F, psi, gamma):
        """(dpsi, dGamma) of the bordered Newton system, J factorised in `lu`, c assembled from c_form."""
        a, bk = self.built.kutta_ab
        y1, y2 = lu.solve(F), lu.solve(self._vector(c_form))
        dg = (a @ y1 - (a @ psi + bk * gamma)) / (bk - a @ y2)
        return -(y1 + dg * y2), dg

    def _incompressible(self):
        """M = 0: one bordered step from psi = psi_D, Gamma = 0 is exact (F linear); Laplacian LU kept."""
        b = self.built
        b.mach.x.array[:] = 0.0
        psi = b.psi_D.x.array.copy()
        self._set_state(psi, 0.0)
        F = self._vector(b.plain.F)
        dpsi, dg = self._bordered_step(b.laplace, b.plain.C, F, psi, 0.0)
        return psi + dpsi, dg

    def _newton(self, forms, mach, psi, gamma, what, max_it, plain):
        """Newton on (psi, Gamma) at Mach `mach` from (psi, gamma); returns (psi, gamma, iterations).

        Stops when the relative step max|dpsi| / max|psi| and |dGamma| / (1 + |Gamma|) fall below
        newton_tol (the step is applied: quadratic convergence leaves an error ~ step^2). Failures
        raise _NewtonFailed (also after max_it):
        plain (no artificial density): a step that does not reduce |F| is halved, down to 1/64;
        more than 2 damped steps, |F| falling less than 2x in an iteration after the first, or a cell
        above Mach 1 (plain Newton has no upwinding to carry it; the artificial density takes over) fail.
        artificial density: the shock has to move into place through damped steps: a non-monotone
        line search (Grippo et al. 1986) halves the step until |F| falls below the largest of the last
        NONMONOTONE values (a monotone one needs 2x the iterations), and the 1/64 step is taken even if
        it does not. It fails after STALL_WINDOW iterations without a new best |F| (counted from the
        second iterate: |F| grows while the shock forms), SHORT_STEPS steps in a row of length <= 1/16,
        or, from the PEAK_AFTER-th iterate on, a largest cell Mach number above max_mach + PEAK_MARGIN
        or above max_mach and grown over the last 3 iterates (converging iterates approach their peak
        from above, by less than PEAK_MARGIN after the first ones: BENCHMARKS.md).
        """
        b = self.built
        tol = self.options["newton_tol"]
        b.mach.x.array[:] = mach
        self._set_state(psi, gamma)
        F = self._vector(forms.F)
        merit, damped = np.linalg.norm(F), 0
        history, steps, peaks = [merit], [], []
        for it in range(1, max_it + 1):
            try:
                forms.lu.factor()
            except _NewtonFailed as e:
                raise _NewtonFailed(f"{what}: iteration {it}: {e}", it) from None
            dpsi, dg = self._bordered_step(forms.lu, forms.C, F, psi, gamma)
            if not (np.all(np.isfinite(dpsi)) and np.isfinite(dg)):
                raise _NewtonFailed(f"{what}: Newton step is not finite (singular Jacobian) at iteration {it}", it)
            small = np.abs(dpsi).max() <= tol * np.abs(psi).max() and abs(dg) <= tol * (1 + abs(gamma))
            t = 1.0
            while True:
                psi_t, gamma_t = psi + t * dpsi, gamma + t * dg
                self._set_state(psi_t, gamma_t)
                F_t = self._vector(forms.F)
                merit_t = np.linalg.norm(F_t)
                reference = merit if plain else max(history[-NONMONOTONE:])
                if small or (np.isfinite(merit_t) and merit_t < (1 - 1e-4 * t) * reference):
                    break
                if t <= 1 / 64 and not plain and np.isfinite(merit_t):
                    break  # non-monotone: the smallest step is taken; the stall test below judges progress
                t *= 0.5
                if t < 1 / 64:
                    raise _NewtonFailed(f"{what}: Newton line search failed at iteration {it} (no step length "
                                        f"reduces |F|={merit:.3e}; {self._floor_cells(psi, gamma, mach)})", it)
            damped += t < 1
            psi, gamma, F, merit = psi_t, gamma_t, F_t, merit_t
            if small:
                return psi, gamma, it
            history.append(merit)
            if plain:
                stalled = damped > 2 or (it >= 2 and merit > 0.5 * history[-2])
                peak = self._max_local_mach(psi, gamma, mach)
                if peak > 1.0:
                    raise _NewtonFailed(f"{what}: iterate {it} has a supersonic cell (Mach {peak:.2f})", it)
            else:
                peaks.append(self._max_local_mach(psi, gamma, mach))
                top = self.options["max_mach"]
                if it >= PEAK_AFTER and peaks[-1] > top + PEAK_MARGIN:
                    raise _NewtonFailed(f"{what}: iterate {it} has a largest cell Mach number {peaks[-1]:.2f} > "
                                        f"max_mach + {PEAK_MARGIN} (iterates approach the solution from above by less): "
                                        f"a shock too strong for the isentropic full potential", it)
                if it >= PEAK_AFTER and top < peaks[-1] and peaks[-3] < peaks[-2] < peaks[-1]:
                    raise _NewtonFailed(f"{what}: the largest cell Mach number of the iterates grows past max_mach "
                                        f"({peaks[-3]:.3f}, {peaks[-2]:.3f}, {peaks[-1]:.3f} at iterations "
                                        f"{it - 2}..{it}): a shock too strong for the isentropic full potential", it)
                # |F| grows while the shock forms: the start and the first step (history[:2]) are no reference
                steps.append(t)
                stalled = ((it >= 2 + STALL_WINDOW and min(history[-STALL_WINDOW:]) >= min(history[2:-STALL_WINDOW]))
                           or (it >= SHORT_STEPS and max(steps[-SHORT_STEPS:]) <= 1 / 16))
            if stalled:
                raise _NewtonFailed(f"{what}: Newton stalled at iteration {it} ({damped} damped step(s), |F| "
                                    f"{history[-2]:.3e} -> {merit:.3e}; {self._floor_cells(psi, gamma, mach)})", it)
        raise _NewtonFailed(f"{what}: Newton did not converge in {max_it} iterations (|F|={merit:.3e}, "
                            f"Kutta residual {self._kutta(psi, gamma):.2e}; {self._floor_cells(psi, gamma, mach)})",
                            max_it)

    def _floor_cells(self, psi, gamma, mach):
        n = int(np.count_nonzero(self._bases(psi, gamma, mach) <= RHO_FLOOR))
        return f"{n} cell(s) at the density floor"

    def _max_local_mach(self, psi, gamma, mach):
        u, _, _ = self._cell_velocity(psi, gamma)
        q2 = np.einsum("ij,ij->i", u, u)
        base = np.maximum(1 + 0.5 * (GAMMA - 1) * mach**2 * (1 - q2), RHO_FLOOR)
        return float(np.sqrt(mach**2 * q2 / base).max())

    def _compressible(self, mach, psi0, gamma0, aoa):
        """(psi, Gamma, Newton iterations) at `mach` from the M = 0 state (psi0, gamma0).

        1. Refuse at once where the Karman-Tsien estimate of the suction peak is beyond vacuum (a
           supersonic region beyond max_mach; see `_karman_tsien_peak`; only for max_mach <= 1.4).
        2. Plain Newton at the target Mach where that estimate is subsonic; it hands over on its first
           supersonic iterate (or converged state above Mc).
        3. Artificial-density Newton at the target Mach from the M = 0 state (or the converged plain
           one), directly: with the shock-point operator it needs no continuation in Mach.
        All iterations share the budget max_newton; the converged state must have its largest cell
        Mach number at most max_mach (checked by the caller).
        """
        b = self.built
        budget = self.options["max_newton"]
        tag = f"potential flow (aoa={aoa}, M={mach})"
        estimate, cp0 = self._karman_tsien_peak(psi0, gamma0, mach)
        if not np.isfinite(estimate) and self.options["max_mach"] <= APRIORI_MAX_MACH:
            raise SolverError(f"{tag}: refused before Newton: the incompressible suction peak Cp0={cp0:.2f}, corrected "
                              f"by Karman-Tsien to M={mach}, is beyond vacuum: a supersonic region beyond "
                              f"max_mach={self.options['max_mach']} (isentropic full potential not valid there)")
        iterations, start, failures = 0, (psi0, gamma0), []
        if estimate <= 1.0:
            try:
                psi, gamma, n = self._newton(b.plain, mach, psi0, gamma0, f"{tag}: plain Newton", min(budget, 12),
                                             plain=True)
                iterations += n
                if self._max_local_mach(psi, gamma, mach) <= float(b.mach_crit.value):
                    return psi, gamma, iterations
                start = (psi, gamma)  # supersonic pocket: a start for the artificial density
            except _NewtonFailed as e:
                failures.append(str(e))
                iterations += e.iterations
        b.transonic = True
        left = budget - iterations
        if left < 1:
            raise SolverError(f"{tag}: no convergence within max_newton={budget} Newton iterations; "
                              f"last failure: {failures[-1]}")
        try:
            psi, gamma, n = self._newton(b.artificial, mach, *start, f"{tag}: artificial-density Newton",
                                         left, plain=False)
        except _NewtonFailed as e:
            peak = self._max_local_mach(b.psi.x.array, float(b.gam.x.array[0]), mach)
            raise SolverError(f"{tag}: no convergence within max_newton={budget} Newton iterations "
                              f"(Karman-Tsien estimate of the largest Mach number {estimate:.2f}, last iterate "
                              f"{peak:.2f}); last failure: {e}") from None
        return psi, gamma, iterations + n

    def _karman_tsien_peak(self, psi0, gamma0, mach):
        """(estimated largest local Mach number, Cp0 of the suction peak) from the M = 0 state: the
        smallest cell Cp0 = 1 - q0^2 mapped by Karman-Tsien, Cp = Cp0 / (beta + M^2/(1 + beta) Cp0/2),
        then isentropically to M_loc^2 = 2/(g-1) ((1 + (g-1)/2 M^2) (p/p_inf)^(-(g-1)/g) - 1),
        p/p_inf = 1 + g/2 M^2 Cp. inf where the map has its pole or p <= 0 (beyond vacuum). Checked
        without the refusal: on the CFD-GCN fine NACA0012 mesh (aoa 0..10, M 0.2..0.8) every condition it
        calls inf either fails or converges to a largest cell Mach number >= 1.52; on a 16.7k-node
        NACA 4412 mesh >= 1.408 (aoa 8, M 0.5). Hence only used with max_mach <= APRIORI_MAX_MACH."""
        u, _, _ = self._cell_velocity(psi0, gamma0)
        cp0 = float((1 - np.einsum("ij,ij->i", u, u)).min())
        beta = math.sqrt(1 - mach**2)
        den = beta + mach**2 / (1 + beta) * cp0 / 2
        ratio = 1 + 0.5 * GAMMA * mach**2 * cp0 / den if den > 0 else -1.0
        if ratio <= 0:
            return math.inf, cp0
        m2 = 2 / (GAMMA - 1) * ((1 + 0.5 * (GAMMA - 1) * mach**2) * ratio ** (-(GAMMA - 1) / GAMMA) - 1)
        return math.sqrt(max(m2, 0.0)), cp0

    # ----------------------------------------------------------------- API
    def solve(self, aoa=0.0, mach=0.0, coords=None):
        """Solve at angle of attack `aoa` (degrees) and free-stream Mach `mach` (0 <= M < 1).

        coords: optional (n_nodes, 2) node positions for the same topology.
        Returns Result with fields (u, v, Cp, rho) per node, cl, cd. Raises SolverError.
        """
        if not 0.0 <= mach < 1.0:
            raise SolverError(f"mach={mach}: the full-potential solver needs 0 <= mach < 1 (subsonic)")
        b = self.built
        with b.dmesh.moved(coords):
            a = math.radians(aoa)
            ca, sa = math.cos(a), math.sin(a)
            x = b.dmesh.coords
            b.psi_D.x.array[b.dof] = x[:, 0] * ca + x[:, 1] * sa  # (dolfinx's interpolate: 4 ms on xcoarse)
            b.transonic = False
            self._geometry()
            psi, gamma = self._incompressible()
            gamma_inc, iterations = gamma, 0
            if mach > 0:
                psi, gamma, iterations = self._compressible(mach, psi, gamma, aoa)
                peak = self._max_local_mach(psi, gamma, mach)
                if peak > self.options["max_mach"]:
                    raise SolverError(f"potential flow (aoa={aoa}, M={mach}): converged, but the largest cell Mach "
                                      f"number {peak:.3f} exceeds max_mach={self.options['max_mach']}: the shock is "
                                      f"too strong for the isentropic full potential (refused as not physical)")
            self._set_state(psi, gamma)
            return self._outputs(aoa, mach, psi, gamma, gamma_inc, iterations)

    def _outputs(self, aoa, mach, psi, gamma, gamma_inc, iterations):
        b = self.built
        x = b.dmesh.coords
        u_cell, grad, area = self._cell_velocity(psi, gamma)
        # nodal velocity: area-weighted average of grad psi, plus the exact vortex part
        n, idx = len(x), self.mesh.triangles.ravel()
        w = np.bincount(idx, np.repeat(area, 3), n)
        acc = np.column_stack([np.bincount(idx, np.repeat(grad[:, k] * area, 3), n) for k in range(2)])
        u_node = acc / w[:, None] + gamma * vortex_velocity(x, b.center)
        rho_n, cp_n, base_n = _thermo(np.einsum("ij,ij->i", u_node, u_node), mach)
        rho_c, cp_c, base_c = _thermo(np.einsum("ij,ij->i", u_cell, u_cell), mach)
        if base_c.min() <= RHO_FLOOR:
            raise SolverError(f"potential flow (aoa={aoa}, M={mach}): density floor reached in "
                              f"{int(np.count_nonzero(base_c <= RHO_FLOOR))} cell(s) (vacuum); the flow is not subsonic")
        C = pressure_forces(x, b.wall_edges, cp_c[b.wall_cells], b.chord)
        a = math.radians(aoa)
        cl = -C[0] * math.sin(a) + C[1] * math.cos(a)
        cd = C[0] * math.cos(a) + C[1] * math.sin(a)
        q2 = np.einsum("ij,ij->i", u_cell, u_cell)
        local_mach = 0.0 if mach == 0 else float(np.sqrt(q2 / (1 / mach**2 + 0.2 * (1 - q2))).max())
        info = {"gamma": gamma, "cl_circulation": -2 * gamma / b.chord, "gamma_incompressible": gamma_inc,
                "max_local_mach": local_mach, "kutta_residual": self._kutta(psi, gamma),
                "transonic": bool(b.transonic), "newton_iterations": iterations}
        return Result(np.column_stack([u_node, cp_n, rho_n]), NAMES, cl, cd, info)
