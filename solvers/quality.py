"""Triangle quality: signed area A = ((b-a) x (c-a))/2 and minimum interior angle.

A cell with A <= tol * mean|A| is inverted (A < 0) or degenerate; both raise
`MeshError` naming the first offending cell, never a silent solve. A mesh read from a
file must also be one consistent triangulation (`check_triangulation`): all cells of
one orientation, no directed edge in two cells (two cells on the same side of an edge)
and cell angles summing to 2 pi around every interior node (no folded fan).
"""
import numpy as np

from .errors import MeshError


def signed_areas(points, triangles):
    """Signed area of every triangle (> 0 for counter-clockwise vertex order)."""
    a, b, c = (points[triangles[:, k]] for k in range(3))
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def min_angles(points, triangles):
    """Smallest interior angle of every triangle, in degrees."""
    p = points[triangles]
    angles = []
    for k in range(3):
        e1 = p[:, (k + 1) % 3] - p[:, k]
        e2 = p[:, (k + 2) % 3] - p[:, k]
        cos = np.einsum("ij,ij->i", e1, e2) / (np.linalg.norm(e1, axis=1) * np.linalg.norm(e2, axis=1))
        angles.append(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
    return np.min(angles, axis=0)


def check_cells(points, triangles, rel_tol=1e-10, what="mesh"):
    """Raise MeshError if any cell is inverted or degenerate; return the signed areas."""
    if not np.all(np.isfinite(points)):
        bad = int(np.argwhere(~np.isfinite(points))[0, 0])
        raise MeshError(f"{what}: node {bad} has a non-finite coordinate; pass finite coords")
    area = signed_areas(points, triangles)
    tol = rel_tol * np.mean(np.abs(area))
    bad = np.flatnonzero(area <= tol)
    if bad.size:
        i = int(bad[np.argmin(area[bad])])
        kind = "inverted" if area[i] < 0 else "degenerate"
        raise MeshError(
            f"{what}: cell {i} is {kind} (signed area {area[i]:.3e}, nodes {triangles[i].tolist()}); "
            f"{bad.size} bad cell(s) in total. Use a smaller node displacement or remesh."
        )
    return area


def orient(points, triangles, what="mesh"):
    """Triangles made counter-clockwise as a whole; MeshError naming a cell whose orientation differs.

    A file may list its cells clockwise or counter-clockwise, but all the same way: a cell of
    the minority orientation is inverted (e.g. a node pushed across the opposite edge).
    """
    area = signed_areas(points, triangles)
    tol = 1e-10 * np.mean(np.abs(area)) if area.size else 0.0
    ccw, cw = np.flatnonzero(area > tol), np.flatnonzero(area < -tol)
    if len(cw) > len(ccw):
        triangles, area, ccw, cw = triangles[:, [0, 2, 1]], -area, cw, ccw
    if len(cw):
        i = int(cw[0])
        raise MeshError(
            f"{what}: cell {i} is inverted (nodes {triangles[i].tolist()} run against the other "
            f"{len(ccw)} cells' orientation, signed area {area[i]:.3e}); {len(cw)} inverted cell(s) in total. "
            f"Fix the node coordinates (a node was moved across an opposite edge) or remesh."
        )
    return np.ascontiguousarray(triangles)


def check_triangulation(points, triangles, what="mesh"):
    """MeshError naming a cell if counter-clockwise `triangles` overlap: a directed edge used by two
    cells, or an interior node whose cell angles sum to more than 2 pi (a fan folded over itself)."""
    m = len(triangles)
    directed = triangles[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    key = directed[:, 0] * (len(points) + 1) + directed[:, 1]
    order = np.argsort(key, kind="stable")
    dup = np.flatnonzero(key[order][1:] == key[order][:-1])
    if dup.size:
        c1, c2 = order[dup[0]] // 3, order[dup[0] + 1] // 3
        raise MeshError(f"{what}: cells {c1} and {c2} overlap (both lie on the same side of edge "
                        f"{directed[order[dup[0]]].tolist()}); remesh or fix the node coordinates")
    undirected = np.sort(directed, axis=1)
    ukey = undirected[:, 0] * (len(points) + 1) + undirected[:, 1]
    _, inverse, count = np.unique(ukey, return_inverse=True, return_counts=True)
    boundary = np.zeros(len(points), dtype=bool)
    boundary[undirected[count[inverse] == 1].ravel()] = True
    p = points[triangles]
    angle = np.empty((m, 3))
    for k in range(3):
        e1, e2 = p[:, (k + 1) % 3] - p[:, k], p[:, (k + 2) % 3] - p[:, k]
        angle[:, k] = np.arctan2(np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]), np.einsum("ij,ij->i", e1, e2))
    total = np.bincount(triangles.ravel(), angle.ravel(), len(points))
    used = np.bincount(triangles.ravel(), minlength=len(points)) > 0
    bad = np.flatnonzero(used & ~boundary & (np.abs(total - 2 * np.pi) > 1e-6))
    if bad.size:
        node = int(bad[0])
        cell = int(np.flatnonzero((triangles == node).any(axis=1))[0])
        raise MeshError(f"{what}: the cells around interior node {node} (e.g. cell {cell}) overlap: their "
                        f"angles sum to {np.degrees(total[node]):.1f} degrees, not 360; remesh or fix the node coordinates")
