"""Meshes: SU2 reading, orientation, quality errors, gmsh NACA generator, I/O, graph."""
import os

import meshio
import numpy as np
import pytest

from zosci.solvers import Mesh, MeshError, airfoil_mesh, mesh_to_graph, naca_mesh, rae2822_surface
from zosci.solvers.quality import signed_areas

from shared_data import MESHES, needs_meshes, su2  # noqa: F401


@needs_meshes
@pytest.mark.parametrize("name,n_nodes", [("xcoarse", 353), ("coarse", 1843), ("fine", 6684)])
def test_read_su2(name, n_nodes):
    m = Mesh.read(su2(name))
    assert m.points.shape == (n_nodes, 2)
    assert set(m.boundaries) == {"airfoil", "farfield"}
    assert len(m.unmarked_boundary_edges()) == 0
    assert np.all(m.signed_areas() > 0)
    assert m.min_angles().min() > 5
    # every node is used, marker nodes lie on the unit chord / the far field
    assert np.unique(m.triangles).size == n_nodes
    x = m.points[m.marker_nodes("airfoil")]
    assert np.isclose(x[:, 0].min(), 0) and np.isclose(x[:, 0].max(), 1)
    r = np.linalg.norm(m.points[m.marker_nodes("farfield")], axis=1)
    assert r.min() > 10


@needs_meshes
def test_quads_are_split():
    m = Mesh.read(su2("xcoarse"))  # 42 triangles + 312 quads
    assert len(m.triangles) == 42 + 2 * 312
    # cells tile the region between the far-field polygon and the airfoil polygon
    assert np.isclose(m.signed_areas().sum(), _ring_area(m, "farfield") - _ring_area(m, "airfoil"), rtol=1e-10)


def _ring_area(m, name, centre=(0.5, 0.0)):
    p = m.points[m.marker_nodes(name)] - centre
    p = p[np.argsort(np.arctan2(p[:, 1], p[:, 0]))]
    return 0.5 * np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1])


def _square(n=4):
    x, y = np.meshgrid(np.linspace(0, 1, n + 1), np.linspace(0, 1, n + 1))
    pts = np.column_stack([x.ravel(), y.ravel()])
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    return pts, np.concatenate([np.column_stack([a, b, c]), np.column_stack([a, c, d])])


def test_clockwise_cells_are_reoriented():
    pts, tri = _square()
    m = Mesh.from_cells(pts, tri[:, [0, 2, 1]])
    assert np.all(m.signed_areas() > 0)


def test_degenerate_cell_is_named():
    pts, tri = _square()
    tri = np.concatenate([tri, [[0, 1, 2]]])  # collinear nodes
    with pytest.raises(MeshError, match=f"cell {len(tri) - 1} is degenerate"):
        Mesh.from_cells(pts, tri)


def test_inverted_cell_is_named():
    pts, tri = _square()
    m = Mesh.from_cells(pts, tri)
    moved = m.points.copy()
    centre = 12  # interior node (2, 2) of the 5x5 grid
    moved[centre] += [0.6, 0.0]  # pushed past its neighbours
    bad = np.flatnonzero(signed_areas(moved, m.triangles) <= 0)
    assert bad.size
    with pytest.raises(MeshError, match=r"cell \d+ is inverted") as err:
        m.with_points(moved)
    assert int(str(err.value).split("cell ")[1].split()[0]) in bad


def test_missing_marker(tmp_path):
    pts, tri = _square()
    Mesh(pts, tri, {"farfield": [[0, 1]]}).write_su2(tmp_path / "m.su2")
    m = Mesh.read(tmp_path / "m.su2")
    with pytest.raises(MeshError, match="no 'airfoil' boundary marker"):
        m.require_markers()
    from zosci.solvers import PotentialFlow

    with pytest.raises(MeshError, match="airfoil"):
        PotentialFlow(m)
    m.boundaries["airfoil"] = np.array([[1, 2]])  # now marked, but most boundary edges are not
    with pytest.raises(MeshError, match="carry no marker"):
        PotentialFlow(m)


def test_missing_file():
    with pytest.raises(MeshError, match="not found"):
        Mesh.read("no/such/mesh.su2")


@pytest.mark.parametrize("code", ["0012", "2412"])
def test_naca_generator(code, tmp_path):
    m = naca_mesh(code, n_airfoil=30, radius=10)
    assert set(m.boundaries) == {"airfoil", "farfield"}
    assert len(m.unmarked_boundary_edges()) == 0  # no crack along the mirror line
    assert np.all(m.signed_areas() > 0) and m.min_angles().min() > 10
    x = m.points[m.marker_nodes("airfoil")]
    assert np.isclose(x[:, 0].min(), 0, atol=1e-12) and np.isclose(x[:, 0].max(), 1)
    r = np.linalg.norm(m.points[m.marker_nodes("farfield")] - [0.5, 0], axis=1)
    assert np.allclose(r, 10)
    # area = 48-gon of radius 10 - airfoil section (NACA 4-digit area ~ 0.685 t c^2)
    t, k = int(code[2:]) / 100, len(m.boundaries["farfield"])
    assert np.isclose(m.signed_areas().sum(), 0.5 * k * 100 * np.sin(2 * np.pi / k) - 0.685 * t, atol=2e-3)
    # round trip through SU2
    m.write_su2(tmp_path / "g.su2")
    m2 = Mesh.read(tmp_path / "g.su2")
    assert np.array_equal(m2.triangles, m.triangles) and np.allclose(m2.points, m.points)


def test_naca_symmetric_mesh_is_mirror_image():
    m = naca_mesh("0012", n_airfoil=20)
    key = lambda p: np.lexsort((p[:, 1], p[:, 0]))  # noqa: E731
    assert np.array_equal(m.points[key(m.points)], (m.points * [1, -1])[key(m.points * [1, -1])])


def test_bad_naca_code():
    with pytest.raises(MeshError, match="4 digits"):
        naca_mesh("12")


def test_airfoil_mesh_from_coordinates():
    """RAE 2822 table: every table point is an airfoil node, sharp TE (2 airfoil edges at (1, 0)), area =
    48-gon minus the section's own (trapezoid-rule) area; surfaces that do not share both ends are refused."""
    upper, lower = rae2822_surface()
    m = airfoil_mesh(upper, lower, radius=10, name="RAE2822")
    assert len(m.unmarked_boundary_edges()) == 0 and np.all(m.signed_areas() > 0) and m.min_angles().min() > 10
    wall = m.points[m.marker_nodes("airfoil")]
    table = np.concatenate([upper, lower])
    assert np.abs(wall[:, None, :] - table[None]).sum(axis=2).min(axis=0).max() < 1e-12
    te = np.flatnonzero(np.all(m.points == [1.0, 0.0], axis=1))
    assert len(te) == 1 and np.count_nonzero(m.boundaries["airfoil"] == te[0]) == 2
    section = np.trapz(upper[:, 1], upper[:, 0]) - np.trapz(lower[:, 1], lower[:, 0])
    k = len(m.boundaries["farfield"])
    assert np.isclose(m.signed_areas().sum(), 0.5 * k * 100 * np.sin(2 * np.pi / k) - section, atol=1e-4)
    with pytest.raises(MeshError, match="share the leading edge .* trailing edge"):
        airfoil_mesh(upper, lower[:-1])
    with pytest.raises(MeshError, match="symmetric about y = 0"):
        airfoil_mesh(upper, lower, mirror=True)


@pytest.mark.parametrize("ext", ["xdmf", "vtu"])
def test_write_and_plot(tmp_path, ext):
    m = naca_mesh("0012", n_airfoil=20, radius=5)
    f = np.sin(m.points[:, 0])
    m.write(tmp_path / f"m.{ext}", point_data={"f": f})
    back = meshio.read(tmp_path / f"m.{ext}")
    assert len(back.points) == len(m.points)
    assert np.allclose(back.point_data["f"], f)
    m.plot(tmp_path / "m.png", field=f, title="f")
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="has 3 values"):
        m.write(tmp_path / f"x.{ext}", point_data={"f": [1, 2, 3]})


def test_graph():
    m = naca_mesh("0012", n_airfoil=20, radius=5)
    g = mesh_to_graph(m)
    n, t = len(m.points), len(m.triangles)
    ei = g.edge_index.numpy()
    assert ei.shape[1] % 2 == 0
    # undirected: every (i, j) has its (j, i)
    pairs = set(map(tuple, ei.T))
    assert all((j, i) in pairs for i, j in pairs)
    # Euler for a triangulated annulus: V - E + T = 0
    assert n - ei.shape[1] // 2 + t == 0
    assert g.pos.shape == (n, 2)
    assert int(g.is_airfoil.sum()) == len(m.marker_nodes("airfoil"))
    assert int(g.is_farfield.sum()) == len(m.marker_nodes("farfield"))
    assert not bool((g.is_airfoil & g.is_farfield).any())


def _push_across(points, triangles, node):
    """Coordinates with `node` mirrored across the opposite edge of its first cell (which inverts it)."""
    cell = int(np.flatnonzero((triangles == node).any(axis=1))[0])
    a, b = (points[i] for i in triangles[cell] if i != node)
    d = (b - a) / np.linalg.norm(b - a)
    p = points[node] - a
    moved = points.copy()
    moved[node] = a + 2 * (p @ d) * d - p
    return moved, cell


def _rewrite_su2_node(src, dst, node, xy):
    """Copy an SU2 file, replacing the coordinates of one node (quads and markers untouched)."""
    lines = open(src).read().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip().upper().startswith("NPOIN"))
    lines[start + 1 + node] = f"{xy[0]:.17g} {xy[1]:.17g} {node}"
    open(dst, "w").write("\n".join(lines) + "\n")


def test_inverted_cell_in_file_is_refused(tmp_path):
    """A node pushed across the opposite edge of one of its cells: the read names an inverted cell of that node."""
    m = naca_mesh("2412", n_airfoil=20, radius=5)
    m.write_su2(tmp_path / "ok.su2")
    node = int(np.flatnonzero(m.node_type() == 0)[len(m.points) // 3])
    moved, cell = _push_across(m.points, m.triangles, node)
    assert signed_areas(moved, m.triangles)[cell] < 0
    _rewrite_su2_node(tmp_path / "ok.su2", tmp_path / "bad.su2", node, moved[node])
    assert len(Mesh.read(tmp_path / "ok.su2").triangles) == len(m.triangles)
    with pytest.raises(MeshError, match=r"cell \d+ is inverted") as err:
        Mesh.read(tmp_path / "bad.su2")
    named = int(str(err.value).split("cell ")[1].split()[0])
    assert node in m.triangles[named]


@needs_meshes
def test_inverted_cell_in_cfd_gcn_file_is_refused(tmp_path):
    """The issue's case: NACA0012_coarse (quads and triangles) with one interior node pushed across."""
    m = Mesh.read(su2("coarse"))
    node = int(np.flatnonzero(m.node_type() == 0)[100])
    moved, cell = _push_across(m.points, m.triangles, node)
    _rewrite_su2_node(su2("coarse"), tmp_path / "bad.su2", node, moved[node])
    with pytest.raises(MeshError, match=r"cell \d+ is inverted") as err:
        Mesh.read(tmp_path / "bad.su2")
    assert str(node) in str(err.value).split("nodes ")[1].split("]")[0]


def test_overlapping_cells_are_refused():
    pts, tri = _square()
    with pytest.raises(MeshError, match=r"cells \d+ and \d+ overlap"):
        Mesh.from_cells(pts, np.concatenate([tri, tri[5:6]]))  # one cell listed twice
    # a fan wound twice around node 0: 7 counter-clockwise cells of 4 pi / 7 each, no edge repeated
    ang = np.arange(7) * 4 * np.pi / 7
    ring = np.column_stack([np.cos(ang), np.sin(ang)]) * (1 + 0.1 * np.arange(7))[:, None]
    fan = np.array([[0, 1 + k, 1 + (k + 1) % 7] for k in range(7)])
    with pytest.raises(MeshError, match=r"interior node 0 .* sum to 720.0 degrees"):
        Mesh.from_cells(np.vstack([[0.0, 0.0], ring]), fan)
