"""2-D triangle meshes with named boundary markers (`airfoil`, `farfield`).

SU2 files are parsed here directly: meshio 5.3 replaces SU2 marker names by
integers and misreads some coordinate columns, so we keep our own small reader.
Quads are split along their shorter diagonal; the cells, which must all share one
orientation, are made counter-clockwise; inverted, degenerate or overlapping cells
raise `MeshError` naming a cell.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import MeshError
from .quality import check_cells, check_triangulation, min_angles, orient, signed_areas

REQUIRED_MARKERS = ("airfoil", "farfield")
_SU2_LINE, _SU2_TRI, _SU2_QUAD = 3, 5, 9


@dataclass
class Mesh:
    """points (n, 2) float64, triangles (m, 3) int64 (CCW), boundaries {name: (k, 2) edges}."""

    points: np.ndarray
    triangles: np.ndarray
    boundaries: dict = field(default_factory=dict)

    def __post_init__(self):
        self.points = np.ascontiguousarray(self.points, dtype=np.float64)[:, :2]
        self.triangles = np.ascontiguousarray(self.triangles, dtype=np.int64)
        self.boundaries = {k: np.asarray(v, dtype=np.int64).reshape(-1, 2) for k, v in self.boundaries.items()}
        n = len(self.points)
        if self.triangles.size and (self.triangles.min() < 0 or self.triangles.max() >= n):
            raise MeshError(f"triangles reference nodes outside 0..{n - 1}")
        for name, e in self.boundaries.items():
            if e.size and (e.min() < 0 or e.max() >= n):
                raise MeshError(f"boundary marker '{name}' references nodes outside 0..{n - 1}")

    # ------------------------------------------------------------------ I/O
    @classmethod
    def read(cls, path):
        """Read an SU2 mesh (triangles and/or quads, line markers), orient CCW, check cells."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise MeshError(f"mesh file {path!r} not found")
        if not path.lower().endswith(".su2"):
            raise MeshError(f"{path!r}: only SU2 (.su2) meshes are read; generate others with solvers.naca")
        points, tris, quads, markers = _read_su2(path)
        return cls.from_cells(points, tris, quads, markers, source=path)

    @classmethod
    def from_cells(cls, points, triangles=(), quads=(), boundaries=None, source="mesh"):
        """Build from triangles and quads (all of one orientation); quads split, cells made CCW and checked."""
        points = np.asarray(points, dtype=np.float64)[:, :2]
        tris = [np.asarray(triangles, dtype=np.int64).reshape(-1, 3)]
        quads = np.asarray(quads, dtype=np.int64).reshape(-1, 4)
        if len(quads):
            tris.append(_split_quads(points, quads))
        tris = orient(points, np.concatenate(tris), what=source)
        check_cells(points, tris, what=source)
        check_triangulation(points, tris, what=source)
        return cls(points, tris, boundaries or {})

    def write(self, path, point_data=None):
        """Write triangles + nodal fields (+ node_type) to XDMF (inline XML) or VTU with meshio; ParaView opens both."""
        import meshio

        path = os.fspath(path)
        if not path.lower().endswith((".xdmf", ".vtu")):
            raise ValueError(f"{path!r}: write to a .xdmf or .vtu file")
        data = {"node_type": self.node_type().astype(np.float64)}
        for k, v in (point_data or {}).items():
            v = np.asarray(v, dtype=np.float64)
            if len(v) != len(self.points):
                raise ValueError(f"point_data[{k!r}] has {len(v)} values; the mesh has {len(self.points)} nodes")
            data[k] = v
        pts = np.column_stack([self.points, np.zeros(len(self.points))])
        out = meshio.Mesh(pts, [("triangle", self.triangles)], point_data=data)
        if path.lower().endswith(".xdmf"):
            # inline XML data: no HDF5, so no clash between h5py's and dolfinx's libhdf5
            meshio.write(path, out, data_format="XML")
        else:
            meshio.write(path, out)

    def write_su2(self, path):
        """Write the mesh (triangles and markers) as SU2."""
        with open(path, "w") as f:
            f.write(f"NDIME= 2\nNELEM= {len(self.triangles)}\n")
            for i, t in enumerate(self.triangles):
                f.write(f"{_SU2_TRI} {t[0]} {t[1]} {t[2]} {i}\n")
            f.write(f"NPOIN= {len(self.points)}\n")
            for i, p in enumerate(self.points):
                f.write(f"{p[0]:.17g} {p[1]:.17g} {i}\n")
            f.write(f"NMARK= {len(self.boundaries)}\n")
            for name, e in self.boundaries.items():
                f.write(f"MARKER_TAG= {name}\nMARKER_ELEMS= {len(e)}\n")
                for a, b in e:
                    f.write(f"{_SU2_LINE} {a} {b}\n")

    def plot(self, path, field=None, title=None, xlim=(-0.5, 1.5), ylim=(-0.75, 0.75), show_edges=True):
        """Save a PNG of the mesh, colored by a nodal `field` (matplotlib tripcolor, Gouraud)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.tri as mtri

        tri = mtri.Triangulation(self.points[:, 0], self.points[:, 1], self.triangles)
        fig, ax = plt.subplots(figsize=(8, 5))
        if field is not None:
            pc = ax.tripcolor(tri, np.asarray(field, dtype=float), shading="gouraud", cmap="viridis")
            fig.colorbar(pc, ax=ax)
        if show_edges:
            ax.triplot(tri, color="k", lw=0.2)
        ax.set_aspect("equal")
        if xlim is not None:
            ax.set_xlim(*xlim)
            ax.set_ylim(*ylim)
        if title:
            ax.set_title(title)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)

    # ------------------------------------------------------------ queries
    def require_markers(self, names=REQUIRED_MARKERS):
        """Raise MeshError naming any missing boundary marker."""
        for name in names:
            if name not in self.boundaries or len(self.boundaries[name]) == 0:
                have = sorted(self.boundaries) or "none"
                raise MeshError(
                    f"mesh has no '{name}' boundary marker (markers present: {have}); "
                    f"tag the {name} edges as MARKER_TAG= {name} in the SU2 file"
                )

    def unmarked_boundary_edges(self):
        """Edges with a single adjacent cell that carry no marker (cracks, forgotten markers)."""
        e = np.sort(self.triangles[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
        edges, count = np.unique(e, axis=0, return_counts=True)
        marked = {tuple(x) for v in self.boundaries.values() for x in np.sort(v, axis=1)}
        return np.array([x for x in map(tuple, edges[count == 1]) if x not in marked], dtype=np.int64).reshape(-1, 2)

    def require_closed_markers(self):
        """Raise MeshError if some boundary edge has no marker."""
        bad = self.unmarked_boundary_edges()
        if len(bad):
            a, b = bad[0]
            raise MeshError(
                f"{len(bad)} boundary edge(s) carry no marker, e.g. nodes {a},{b} at {self.points[a].round(6).tolist()}; "
                f"mark every boundary edge as 'airfoil' or 'farfield' (an unmarked edge is a crack in the domain)"
            )

    def marker_nodes(self, name):
        """Sorted unique node indices on boundary `name`."""
        self.require_markers([name])
        return np.unique(self.boundaries[name])

    def node_type(self):
        """0 interior, 1 airfoil, 2 farfield (per node)."""
        t = np.zeros(len(self.points), dtype=np.int64)
        for code, name in ((2, "farfield"), (1, "airfoil")):
            if name in self.boundaries:
                t[np.unique(self.boundaries[name])] = code
        return t

    def with_points(self, coords):
        """Same topology, new node positions (checked for inverted cells)."""
        coords = np.asarray(coords, dtype=np.float64)
        if coords.shape != self.points.shape:
            raise MeshError(f"coords has shape {coords.shape}; expected {self.points.shape} (n_nodes x 2)")
        check_cells(coords, self.triangles, what="moved mesh")
        return Mesh(coords, self.triangles, self.boundaries)

    def signed_areas(self):
        return signed_areas(self.points, self.triangles)

    def min_angles(self):
        return min_angles(self.points, self.triangles)

    def edges(self):
        """Unique undirected edges (e, 2) from the cell connectivity, sorted node pairs."""
        e = self.triangles[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
        return np.unique(np.sort(e, axis=1), axis=0)

    def __repr__(self):
        marks = ", ".join(f"{k}:{len(v)}" for k, v in self.boundaries.items())
        return f"Mesh({len(self.points)} nodes, {len(self.triangles)} triangles, markers {{{marks}}})"


def _split_quads(points, quads):
    """Split each quad (a,b,c,d) along its shorter diagonal into two triangles."""
    a, b, c, d = quads.T
    ac = np.linalg.norm(points[a] - points[c], axis=1)
    bd = np.linalg.norm(points[b] - points[d], axis=1)
    use_ac = ac <= bd
    t1 = np.where(use_ac[:, None], np.column_stack([a, b, c]), np.column_stack([a, b, d]))
    t2 = np.where(use_ac[:, None], np.column_stack([a, c, d]), np.column_stack([b, c, d]))
    return np.concatenate([t1, t2])


def _read_su2(path):
    """Parse NDIME/NELEM/NPOIN/NMARK sections of a 2-D SU2 file."""
    with open(path) as f:
        lines = [ln.split("%")[0].strip() for ln in f]
    lines = [ln for ln in lines if ln]
    tris, quads, markers, points = [], [], {}, None
    i = 0

    def value(line):
        return line.split("=", 1)[1].split()

    while i < len(lines):
        key = lines[i].split("=", 1)[0].strip().upper()
        if key == "NDIME":
            if int(value(lines[i])[0]) != 2:
                raise MeshError(f"{path}: NDIME={value(lines[i])[0]}; only 2-D meshes are supported")
            i += 1
        elif key == "NELEM":
            n = int(value(lines[i])[0])
            for ln in lines[i + 1 : i + 1 + n]:
                tok = [int(t) for t in ln.split()]
                if tok[0] == _SU2_TRI:
                    tris.append(tok[1:4])
                elif tok[0] == _SU2_QUAD:
                    quads.append(tok[1:5])
                else:
                    raise MeshError(f"{path}: unsupported SU2 element type {tok[0]} (only 5=triangle, 9=quad)")
            i += 1 + n
        elif key == "NPOIN":
            n = int(value(lines[i])[0])
            points = np.array([[float(t) for t in ln.split()[:2]] for ln in lines[i + 1 : i + 1 + n]])
            i += 1 + n
        elif key == "NMARK":
            i += 1
        elif key == "MARKER_TAG":
            name = value(lines[i])[0] if value(lines[i]) else ""
            n = int(value(lines[i + 1])[0])
            edges = [[int(t) for t in ln.split()[1:3]] for ln in lines[i + 2 : i + 2 + n]]
            markers[name] = np.array(edges, dtype=np.int64).reshape(-1, 2)
            i += 2 + n
        else:
            i += 1
    if points is None or not (tris or quads):
        raise MeshError(f"{path}: no NPOIN or NELEM section; is this an SU2 mesh?")
    return points, np.array(tris, dtype=np.int64).reshape(-1, 3), np.array(quads, dtype=np.int64).reshape(-1, 4), markers


def airfoil_geometry(mesh):
    """Leading edge x, trailing-edge node, chord and the (quarter-chord) vortex centre.

    chord = extent of the airfoil marker in x; TE = airfoil node of largest x;
    vortex centre = (x_le + c/4, midpoint of the airfoil's upper/lower y at that x).
    """
    mesh.require_markers()
    nodes = mesh.marker_nodes("airfoil")
    x = mesh.points[nodes]
    x_le, x_te = x[:, 0].min(), x[:, 0].max()
    chord = x_te - x_le
    te = int(nodes[np.argmax(x[:, 0])])
    xq = x_le + 0.25 * chord
    ys = []
    for a, b in mesh.boundaries["airfoil"]:
        pa, pb = mesh.points[a], mesh.points[b]
        if (pa[0] - xq) * (pb[0] - xq) <= 0 and pa[0] != pb[0]:
            t = (xq - pa[0]) / (pb[0] - pa[0])
            ys.append(pa[1] + t * (pb[1] - pa[1]))
    yq = 0.5 * (min(ys) + max(ys)) if ys else float(np.mean(x[:, 1]))
    return {"x_le": x_le, "chord": chord, "te": te, "center": np.array([xq, yq])}
