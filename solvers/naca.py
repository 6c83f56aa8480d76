"""Airfoil meshes with gmsh (python API, no GUI, one thread): NACA 4-digit and RAE 2822 sections, or
any closed-trailing-edge coordinates.

NACA 4-digit: closed-trailing-edge thickness  y_t = 5t (0.2969 sqrt(x) - 0.1260 x - 0.3516 x^2
+ 0.2843 x^3 - 0.1036 x^4), camber line of the 4-digit series, chord 1 from (0,0)
to (1,0), cosine spacing with `n_airfoil` nodes per side. RAE 2822 (supercritical): the published
65-point-per-side table (see `rae2822_surface`). A circular far field of `radius` is centred at
mid-chord. Symmetric sections (NACA 00xx) are meshed on the upper half and mirrored, so the mesh is
exactly symmetric about y = 0. Markers: `airfoil`, `farfield`.
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
    if n_airfoil < 8:
        raise MeshError("naca_mesh: n_airfoil must be >= 8")
    upper, lower = naca4_surface(code, n_airfoil)
    if mirror is None:
        mirror = str(code)[:2] == "00"
    return airfoil_mesh(upper, lower, radius, n_farfield, mirror, growth, name=f"NACA{code}")


def rae2822_surface():
    """Upper and lower surface (65 points each, LE (0,0) -> TE (1,0), sharp TE) of the RAE 2822
    supercritical section: the coordinate table of the NPARC Alliance validation archive,
    https://www.grc.nasa.gov/WWW/wind/valid/raetaf/geom.txt (Cook, McDonald, Firmin, AGARD AR 138)."""
    return (np.column_stack([_RAE2822[:, 0], _RAE2822[:, 1]]), np.column_stack([_RAE2822[:, 0], _RAE2822[:, 2]]))


def airfoil_mesh(upper, lower, radius=20.0, n_farfield=48, mirror=False, growth=None, name="airfoil"):
    """Triangle `Mesh` around the airfoil with surfaces `upper` and `lower` ((n, 2) each, leading edge
    -> trailing edge, sharing both end points: a sharp trailing edge), markers `airfoil`, `farfield`.

    The wall cell size at each point is its local point spacing; radius (in chords), n_farfield and
    growth as in `naca_mesh`; mirror: mesh the upper half and reflect it (a symmetric section on y = 0).
    """
    import gmsh

    upper, lower = np.asarray(upper, dtype=np.float64), np.asarray(lower, dtype=np.float64)
    for side, pts in (("upper", upper), ("lower", lower)):
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 8:
            raise MeshError(f"{name}: {side} surface must be an (n, 2) array of at least 8 points, got {pts.shape}")
    if not (np.allclose(upper[0], lower[0]) and np.allclose(upper[-1], lower[-1])):
        raise MeshError(f"{name}: upper and lower surfaces must share the leading edge (first point) and the "
                        f"trailing edge (last point): a sharp trailing edge")
    if n_farfield < 8:
        raise MeshError(f"{name}: n_farfield must be >= 8")
    if radius < 2:
        raise MeshError(f"{name}: radius must be >= 2 chords")
    if mirror and not (np.allclose(upper[[0, -1], 1], 0.0) and np.allclose(lower[:, 1], -upper[:, 1])):
        raise MeshError(f"{name}: mirror=True needs a section symmetric about y = 0")

    def spacing(pts):
        ds = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        return ds, np.concatenate([[ds[0]], 0.5 * (ds[1:] + ds[:-1]), [ds[-1]]])

    ds_up, h_up = spacing(upper)
    ds_lo, h_lo = spacing(lower)
    cx = 0.5 * (upper[0, 0] + upper[-1, 0])
    gmsh.initialize(["", "-nt", "1"], interruptible=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.option.setNumber("General.NumThreads", 1)
        gmsh.option.setNumber("Mesh.Algorithm", 6)
        gmsh.model.add(name)
        geo = gmsh.model.geo
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
            ptags, air = polyline(upper[::-1], h_up[::-1])
            far_pts = arc_points(math.pi, 0.0, n_farfield // 2 + 1)
            ftags, far = polyline(far_pts, [h_far] * len(far_pts))
            left = geo.addLine(ptags[-1], ftags[0])
            right = geo.addLine(ftags[-1], ptags[0])
            loop = geo.addCurveLoop(air + [left] + far + [right])
            geo.addPlaneSurface([loop])
        else:
            contour = np.concatenate([upper[::-1], lower[1:-1]])  # TE, upper, LE, lower (closed)
            sizes = np.concatenate([h_up[::-1], h_lo[1:-1]])
            tags = [geo.addPoint(px, py, 0, s) for (px, py), s in zip(contour, sizes)]
            air = [geo.addLine(a, b) for a, b in zip(tags, tags[1:] + tags[:1])]
            far_pts = arc_points(0.0, 2 * math.pi, n_farfield + 1)[:-1]
            ftags = [geo.addPoint(px, py, 0, h_far) for px, py in far_pts]
            far = [geo.addLine(a, b) for a, b in zip(ftags, ftags[1:] + ftags[:1])]
            geo.addPlaneSurface([geo.addCurveLoop(far), geo.addCurveLoop(air)])
        geo.synchronize()
        if growth is not None:
            if growth <= 0:
                raise MeshError(f"{name}: growth={growth} must be > 0 (or None)")
            fd = gmsh.model.mesh.field
            dist = fd.add("Distance")
            fd.setNumbers(dist, "CurvesList", air)
            fd.setNumber(dist, "Sampling", 20)
            size = fd.add("Threshold")  # linear ramp h_wall -> h_far over the distance (h_far - h_wall) / growth
            h_wall = float(max(ds_up.max(), ds_lo.max()))
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
    return Mesh.from_cells(points, tris, boundaries=bnd, source=f"{name} gmsh mesh")


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


# RAE 2822: x, y upper, y lower (chord 1), the 65-point table of rae2822_surface's source
_RAE2822 = np.array([
    (0.000000, 0.000000, 0.000000), (0.000602, 0.003165, -0.003160), (0.002408, 0.006306, -0.006308),
    (0.005412, 0.009416, -0.009443), (0.009607, 0.012480, -0.012559), (0.014984, 0.015489, -0.015649),
    (0.021530, 0.018441, -0.018707), (0.029228, 0.021348, -0.021722), (0.038060, 0.024219, -0.024685),
    (0.048005, 0.027062, -0.027586), (0.059039, 0.029874, -0.030416), (0.071136, 0.032644, -0.033170),
    (0.084265, 0.035360, -0.035843), (0.098396, 0.038011, -0.038431), (0.113495, 0.040585, -0.040929),
    (0.129524, 0.043071, -0.043326), (0.146447, 0.045457, -0.045610), (0.164221, 0.047729, -0.047773),
    (0.182803, 0.049874, -0.049805), (0.202150, 0.051885, -0.051694), (0.222215, 0.053753, -0.053427),
    (0.242949, 0.055470, -0.054994), (0.264302, 0.057026, -0.056376), (0.286222, 0.058414, -0.057547),
    (0.308658, 0.059629, -0.058459), (0.331555, 0.060660, -0.059046), (0.354858, 0.061497, -0.059236),
    (0.378510, 0.062133, -0.058974), (0.402455, 0.062562, -0.058224), (0.426635, 0.062779, -0.056979),
    (0.450991, 0.062774, -0.055257), (0.475466, 0.062530, -0.053099), (0.500000, 0.062029, -0.050563),
    (0.524534, 0.061254, -0.047719), (0.549009, 0.060194, -0.044642), (0.573365, 0.058845, -0.041397),
    (0.597545, 0.057218, -0.038043), (0.621490, 0.055344, -0.034631), (0.645142, 0.053258, -0.031207),
    (0.668445, 0.050993, -0.027814), (0.691342, 0.048575, -0.024495), (0.713778, 0.046029, -0.021289),
    (0.735698, 0.043377, -0.018232), (0.757051, 0.040641, -0.015357), (0.777785, 0.037847, -0.012690),
    (0.797850, 0.035017, -0.010244), (0.817197, 0.032176, -0.008027), (0.835779, 0.029347, -0.006048),
    (0.853553, 0.026554, -0.004314), (0.870476, 0.023817, -0.002829), (0.886505, 0.021153, -0.001592),
    (0.901604, 0.018580, -0.000600), (0.915735, 0.016113, 0.000157), (0.928864, 0.013769, 0.000694),
    (0.940961, 0.011562, 0.001033), (0.951995, 0.009508, 0.001197), (0.961940, 0.007622, 0.001212),
    (0.970772, 0.005915, 0.001112), (0.978470, 0.004401, 0.000935), (0.985016, 0.003092, 0.000719),
    (0.990393, 0.002001, 0.000497), (0.994588, 0.001137, 0.000296), (0.997592, 0.000510, 0.000137),
    (0.999398, 0.000128, 0.000035), (1.000000, 0.000000, 0.000000),
])
