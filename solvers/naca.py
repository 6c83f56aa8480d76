"""NACA 4-digit airfoil meshes with gmsh (python API, no GUI, one thread).

Closed-trailing-edge thickness  y_t = 5t (0.2969 sqrt(x) - 0.1260 x - 0.3516 x^2
+ 0.2843 x^3 - 0.1036 x^4), camber line of the 4-digit series, chord 1 from (0,0)
to (1,0), cosine spacing with `n_airfoil` nodes per side, a circular far field of
`radius` centred at mid-chord. Symmetric sections (NACA 00xx) are meshed on the
upper half and mirrored, so the mesh is exactly symmetric about y = 0.
Markers: `airfoil`, `farfield`.
"""
import math

import numpy as np

from .errors import MeshError
from .mesh import Mesh


def naca4_surface(code, n):
    """Upper and lower surface points (n each, LE -> TE) of NACA `code` (e.g. '0012')."""
    code = str(code)
    if len(code) != 4 or not code.isdigit():
        raise MeshError(f"NACA code {code!r}: give 4 digits, e.g. '0012' or '2412'")
    m, p, t = int(code[0]) / 100, int(code[1]) / 10, int(code[2:]) / 100
    if t <= 0:
        raise MeshError(f"NACA code {code!r}: thickness digits must be > 0")
    x = 0.5 * (1 - np.cos(np.linspace(0, math.pi, n)))
    yt = 5 * t * (0.2969 * np.sqrt(x) - 0.1260 * x - 0.3516 * x**2 + 0.2843 * x**3 - 0.1036 * x**4)
    yc, dyc = np.zeros_like(x), np.zeros_like(x)
    if m > 0 and p > 0:
        front = x < p
        yc = np.where(front, m / p**2 * (2 * p * x - x**2), m / (1 - p) ** 2 * (1 - 2 * p + 2 * p * x - x**2))
        dyc = np.where(front, 2 * m / p**2 * (p - x), 2 * m / (1 - p) ** 2 * (p - x))
    th = np.arctan(dyc)
    upper = np.column_stack([x - yt * np.sin(th), yc + yt * np.cos(th)])
    lower = np.column_stack([x + yt * np.sin(th), yc - yt * np.cos(th)])
    upper[-1] = lower[-1] = (1.0, yc[-1])  # closed trailing edge
    return upper, lower


def naca_mesh(code="0012", n_airfoil=60, radius=20.0, n_farfield=48, mirror=None, growth=None):
    """Generate a triangle `Mesh` around NACA `code` with markers `airfoil` and `farfield`.

    n_airfoil: nodes per airfoil side (resolution); radius: far-field radius in chords;
    n_farfield: nodes on the far-field circle; mirror: mesh half and mirror (default: symmetric codes);
    growth: if given, cap the cell size at h_wall + growth * (distance to the airfoil), h_wall the
    largest airfoil edge length (smaller growth: finer field mesh; None: gmsh's default extension).
    """
    import gmsh

    if n_airfoil < 8 or n_farfield < 8:
        raise MeshError("naca_mesh: n_airfoil and n_farfield must be >= 8")
    if radius < 2:
        raise MeshError("naca_mesh: radius must be >= 2 chords")
    upper, lower = naca4_surface(code, n_airfoil)
    if mirror is None:
        mirror = str(code)[:2] == "00"
    cx = 0.5
    gmsh.initialize(["", "-nt", "1"], interruptible=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.option.setNumber("General.NumThreads", 1)
        gmsh.option.setNumber("Mesh.Algorithm", 6)
        gmsh.model.add("naca")
        geo = gmsh.model.geo
        ds = np.linalg.norm(np.diff(upper, axis=0), axis=1)
        h = np.concatenate([[ds[0]], 0.5 * (ds[1:] + ds[:-1]), [ds[-1]]])
        h_far = 2 * math.pi * radius / n_farfield

        def polyline(pts, sizes):
            tags = [geo.addPoint(px, py, 0, s) for (px, py), s in zip(pts, sizes)]
            return tags, [geo.addLine(a, b) for a, b in zip(tags[:-1], tags[1:])]

        def arc_points(a0, a1, k):
            ang = np.linspace(a0, a1, k)
            pts = np.column_stack([cx + radius * np.cos(ang), radius * np.sin(ang)])
            pts[np.isclose(ang, 0.0) | np.isclose(ang, math.pi), 1] = 0.0  # exactly on the symmetry line
            return pts

        if mirror:
            # upper half: TE -> LE along the airfoil, LE -> far left, arc, far right -> TE
            ptags, air = polyline(upper[::-1], h[::-1])
            far_pts = arc_points(math.pi, 0.0, n_farfield // 2 + 1)
            ftags, far = polyline(far_pts, [h_far] * len(far_pts))
            left = geo.addLine(ptags[-1], ftags[0])
            right = geo.addLine(ftags[-1], ptags[0])
            loop = geo.addCurveLoop(air + [left] + far + [right])
            geo.addPlaneSurface([loop])
        else:
            contour = np.concatenate([upper[::-1], lower[1:-1]])  # TE, upper, LE, lower (closed)
            sizes = np.concatenate([h[::-1], h[1:-1]])
            tags = [geo.addPoint(px, py, 0, s) for (px, py), s in zip(contour, sizes)]
            air = [geo.addLine(a, b) for a, b in zip(tags, tags[1:] + tags[:1])]
            far_pts = arc_points(0.0, 2 * math.pi, n_farfield + 1)[:-1]
            ftags = [geo.addPoint(px, py, 0, h_far) for px, py in far_pts]
            far = [geo.addLine(a, b) for a, b in zip(ftags, ftags[1:] + ftags[:1])]
            geo.addPlaneSurface([geo.addCurveLoop(far), geo.addCurveLoop(air)])
        geo.synchronize()
        if growth is not None:
            if growth <= 0:
                raise MeshError(f"naca_mesh: growth={growth} must be > 0 (or None)")
            fd = gmsh.model.mesh.field
            dist = fd.add("Distance")
            fd.setNumbers(dist, "CurvesList", air)
            fd.setNumber(dist, "Sampling", 20)
            size = fd.add("Threshold")  # linear ramp h_wall -> h_far over the distance (h_far - h_wall) / growth
            h_wall = float(ds.max())
            fd.setNumber(size, "InField", dist)
            fd.setNumber(size, "SizeMin", h_wall)
            fd.setNumber(size, "SizeMax", h_far)
            fd.setNumber(size, "DistMin", 0.0)
            fd.setNumber(size, "DistMax", (h_far - h_wall) / growth)
            fd.setAsBackgroundMesh(size)
        gmsh.model.mesh.generate(2)
        tags, xyz, _ = gmsh.model.mesh.getNodes()
        index = np.full(int(tags.max()) + 1, -1, dtype=np.int64)
        index[tags.astype(np.int64)] = np.arange(len(tags))
        points = xyz.reshape(-1, 3)[:, :2]
        _, _, tri_nodes = gmsh.model.mesh.getElements(2)
        tris = index[np.asarray(tri_nodes[0], dtype=np.int64)].reshape(-1, 3)

        def edges(curves):
            out = []
            for c in curves:
                _, _, en = gmsh.model.mesh.getElements(1, c)
                out.append(index[np.asarray(en[0], dtype=np.int64)].reshape(-1, 2))
            return np.concatenate(out)

        bnd = {"airfoil": edges(air), "farfield": edges(far)}
    finally:
        gmsh.finalize()
    if mirror:
        points, tris, bnd = _mirror(points, tris, bnd)
    points, tris, bnd = _drop_unused(points, tris, bnd)
    return Mesh.from_cells(points, tris, boundaries=bnd, source=f"NACA{code} gmsh mesh")


def _mirror(points, tris, bnd):
    """Reflect about y = 0, sharing the nodes that lie on it."""
    points = points.copy()
    points[np.abs(points[:, 1]) < 1e-12, 1] = 0.0
    on_axis = points[:, 1] == 0.0
    new = np.flatnonzero(~on_axis)
    image = np.arange(len(points))
    image[new] = len(points) + np.arange(len(new))
    pts = np.concatenate([points, points[new] * [1.0, -1.0]])
    tris = np.concatenate([tris, image[tris][:, [0, 2, 1]]])
    bnd = {k: np.concatenate([e, image[e]]) for k, e in bnd.items()}
    return pts, tris, bnd


def _drop_unused(points, tris, bnd):
    used = np.zeros(len(points), dtype=bool)
    used[tris.ravel()] = True
    new = np.cumsum(used) - 1
    return points[used], new[tris], {k: new[e] for k, e in bnd.items()}
