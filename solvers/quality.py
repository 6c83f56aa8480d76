"""Triangle quality: signed area A = ((b-a) x (c-a))/2 and minimum interior angle.

A cell with A <= tol * mean|A| is inverted (A < 0) or degenerate; both raise
`MeshError` naming the first offending cell, never a silent solve.
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
