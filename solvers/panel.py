"""Hess-Smith panel method: incompressible inviscid flow around an airfoil polygon (the oracle).

Independent of the finite-element solvers: N straight panels, each with its own constant
source strength sigma_j and one vortex strength gamma shared by all panels. Unknowns
(sigma_1..sigma_N, gamma) from N + 1 conditions: no flow through any panel at its midpoint,
V_inf . n_i + sum_j sigma_j Un_ij + gamma sum_j Vn_ij = 0, and the Kutta condition that the
flow leaves the trailing edge with equal speed on both sides, Vt_1 + Vt_N = 0 (first and last
panels, tangents pointing lower TE -> LE -> upper TE). A unit source panel from (0,0) to (L,0)
induces u = ln(r1/r2)/2pi, v = (th2 - th1)/2pi at a point, r_k, th_k its distance and angle
from the panel ends; a unit vortex panel induces the same velocity turned by +90 degrees.
Cl = -2 Gamma / c (Kutta-Joukowski, V_inf = 1, Gamma = gamma x perimeter, counter-clockwise).

Compressibility: Karman-Tsien maps the incompressible Cp0 to
Cp = Cp0 / (beta + M^2/(1 + beta) Cp0/2), beta = sqrt(1 - M^2).
"""
import math

import numpy as np

from .errors import MeshError


class PanelResult:
    """cl (Kutta-Joukowski), cl_pressure (integrated Cp), per-panel midpoints, normals, lengths, cp."""

    def __init__(self, cl, cl_pressure, mid, normal, length, cp, chord, aoa):
        self.cl, self.cl_pressure = float(cl), float(cl_pressure)
        self.mid, self.normal, self.length, self.cp = mid, normal, length, cp
        self.chord, self.aoa = chord, aoa

    def cl_karman_tsien(self, mach):
        """Lift coefficient from the Karman-Tsien-corrected surface pressure at free-stream Mach `mach`."""
        return _lift(karman_tsien(self.cp, mach), self.normal, self.length, self.chord, self.aoa)


def karman_tsien(cp0, mach):
    """Compressible Cp from incompressible Cp0: Cp0 / (beta + M^2/(1 + beta) Cp0 / 2)."""
    beta = math.sqrt(1 - mach**2)
    return cp0 / (beta + mach**2 / (1 + beta) * cp0 / 2)


def _lift(cp, normal, length, chord, aoa):
    """Cl = sum_j -Cp_j n_j . e_lift L_j / c with outward normals n_j, e_lift = (-sin a, cos a)."""
    a = math.radians(aoa)
    return float(np.sum(-cp * (normal @ np.array([-math.sin(a), math.cos(a)])) * length) / chord)


def airfoil_loop(mesh):
    """Airfoil marker nodes of a `Mesh` as one closed loop from the trailing edge along the lower
    surface to the leading edge and back along the upper surface (first node = last node = TE)."""
    from .mesh import airfoil_geometry

    te = airfoil_geometry(mesh)["te"]
    edges = mesh.boundaries["airfoil"]
    nbrs = {}
    for a, b in edges:
        nbrs.setdefault(int(a), []).append(int(b))
        nbrs.setdefault(int(b), []).append(int(a))
    if any(len(v) != 2 for v in nbrs.values()):
        raise MeshError("airfoil marker is not one closed loop (some node has other than 2 airfoil edges)")
    loop, prev = [te], None
    while True:
        cur = loop[-1]
        nxt = [n for n in nbrs[cur] if n != prev]
        nxt = nxt[0] if prev is not None else min(nbrs[cur], key=lambda n: mesh.points[n, 1])  # lower side first
        if nxt == te:
            break
        prev = cur
        loop.append(nxt)
    if len(loop) != len(nbrs):
        raise MeshError(f"airfoil marker has {len(nbrs)} nodes but its loop through the TE has {len(loop)}")
    return mesh.points[np.array(loop + [te])]


def hess_smith(points, aoa):
    """Solve at angle of attack `aoa` (degrees) around the closed polygon `points` (N+1, 2), ordered
    TE -> lower surface -> LE -> upper surface -> TE (clockwise). Returns a PanelResult."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 5 or not np.allclose(pts[0], pts[-1]):
        raise MeshError("hess_smith: give at least 4 panels as a closed polygon (first point = last point)")
    d = np.diff(pts, axis=0)
    length = np.linalg.norm(d, axis=1)
    t = d / length[:, None]
    n = np.column_stack([-t[:, 1], t[:, 0]])  # left of the direction of travel: outward for clockwise order
    if np.sum(pts[:-1, 0] * pts[1:, 1] - pts[1:, 0] * pts[:-1, 1]) > 0:
        raise MeshError("hess_smith: the polygon runs counter-clockwise; order it TE -> lower -> LE -> upper")
    mid = 0.5 * (pts[:-1] + pts[1:])
    # coordinates of every midpoint i in the frame of every panel j (origin at its start)
    rel = mid[:, None, :] - pts[None, :-1, :]
    x = np.einsum("ijk,jk->ij", rel, t)
    y = np.einsum("ijk,jk->ij", rel, n)
    r1 = np.hypot(x, y)
    r2 = np.hypot(x - length[None, :], y)
    dth = np.arctan2(y, x - length[None, :]) - np.arctan2(y, x)
    dth = np.where(np.eye(len(length), dtype=bool), math.pi, dth)  # own panel, seen from outside
    dth = np.where(dth > math.pi, dth - 2 * math.pi, np.where(dth < -math.pi, dth + 2 * math.pi, dth))
    us, vs = np.log(r1 / r2) / (2 * math.pi), dth / (2 * math.pi)  # source velocity in panel-j frame
    uv, vv = -vs, us  # vortex: turned by +90 degrees
    # back to global, then normal / tangential components at panel i
    def comp(u, v, e):
        gx = u * t[None, :, 0] + v * n[None, :, 0]
        gy = u * t[None, :, 1] + v * n[None, :, 1]
        return gx * e[:, None, 0] + gy * e[:, None, 1]

    sn, st, vn, vt = comp(us, vs, n), comp(us, vs, t), comp(uv, vv, n), comp(uv, vv, t)
    a = math.radians(aoa)
    vinf = np.array([math.cos(a), math.sin(a)])
    N = len(length)
    A = np.zeros((N + 1, N + 1))
    rhs = np.zeros(N + 1)
    A[:N, :N], A[:N, N], rhs[:N] = sn, vn.sum(axis=1), -n @ vinf
    A[N, :N] = st[0] + st[-1]
    A[N, N] = vt[0].sum() + vt[-1].sum()
    rhs[N] = -(t[0] + t[-1]) @ vinf
    sol = np.linalg.solve(A, rhs)
    sigma, gamma = sol[:N], sol[N]
    vtan = t @ vinf + st @ sigma + gamma * vt.sum(axis=1)
    cp = 1 - vtan**2
    chord = pts[:, 0].max() - pts[:, 0].min()
    cl = -2 * gamma * length.sum() / chord
    return PanelResult(cl, _lift(cp, n, length, chord, aoa), mid, n, length, cp, chord, aoa)
