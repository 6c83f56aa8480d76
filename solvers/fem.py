"""Mesh -> dolfinx (0.5.2) glue shared by both solvers, all on MPI.COMM_SELF.

`DolfinxMesh` keeps the maps between our node numbering and dolfinx's geometry
nodes / P1 dofs, the facet tags of the boundary markers, and moves the mesh by
assigning `geometry.x` (compiled forms stay valid: they only see the geometry).
"""
from contextlib import contextmanager

import numpy as np

from .errors import SolverError
from .quality import check_cells

MARKER_IDS = {"airfoil": 1, "farfield": 2}


class DolfinxMesh:
    """A dolfinx mesh built from `solvers.mesh.Mesh`, with node/facet maps."""

    def __init__(self, mesh, marker_ids=None):
        import dolfinx
        import ufl
        from mpi4py import MPI

        self.mesh = mesh
        self.marker_ids = dict(marker_ids or {k: MARKER_IDS.get(k, i + 10) for i, k in enumerate(mesh.boundaries)})
        domain = ufl.Mesh(ufl.VectorElement("Lagrange", ufl.triangle, 1))
        dm = dolfinx.mesh.create_mesh(MPI.COMM_SELF, mesh.triangles, mesh.points, domain)
        self.dm = dm
        n = len(mesh.points)
        self.node_of_geom = np.asarray(dm.geometry.input_global_indices, dtype=np.int64)
        gdm = dm.geometry.dofmap.array.reshape(-1, 3)
        dm.topology.create_connectivity(2, 0)
        c2v = dm.topology.connectivity(2, 0).array.reshape(-1, 3)
        self.vertex_of_node = np.empty(n, dtype=np.int32)
        self.vertex_of_node[self.node_of_geom[gdm]] = c2v
        self.cell_nodes = self.node_of_geom[gdm]  # our node ids per dolfinx cell
        self.facet_tags = self._tag_facets()
        self.ds = ufl.Measure("ds", domain=dm, subdomain_data=self.facet_tags)
        self._coords = mesh.points.copy()

    def _tag_facets(self):
        import dolfinx

        dm = self.dm
        dm.topology.create_connectivity(1, 0)
        dm.topology.create_connectivity(1, 2)
        f2v = np.sort(dm.topology.connectivity(1, 0).array.reshape(-1, 2), axis=1)
        key = {(int(a), int(b)): i for i, (a, b) in enumerate(f2v)}
        facets, values = [], []
        for name, edges in self.mesh.boundaries.items():
            v = np.sort(self.vertex_of_node[edges], axis=1)
            for a, b in v:
                f = key.get((int(a), int(b)))
                if f is None:
                    raise SolverError(f"boundary marker '{name}' has an edge ({a},{b}) that is not a cell edge")
                facets.append(f)
                values.append(self.marker_ids[name])
        order = np.argsort(facets)
        return dolfinx.mesh.meshtags(dm, 1, np.asarray(facets, dtype=np.int32)[order],
                                     np.asarray(values, dtype=np.int32)[order])

    def facets(self, name):
        """Facet indices of marker `name`."""
        return self.facet_tags.find(self.marker_ids[name])

    def dofs_of_nodes(self, V):
        """For a scalar P1 (or the vertex dofs of a P2) space: dof index per node (block index)."""
        cell_dofs = V.dofmap.list.array.reshape(len(self.cell_nodes), -1)[:, :3]
        out = np.empty(len(self.mesh.points), dtype=np.int64)
        out[self.cell_nodes] = cell_dofs
        return out

    @property
    def coords(self):
        return self._coords

    @contextmanager
    def moved(self, coords):
        """Nodes at coords (None: the mesh's own) inside the block; put back if it raises SolverError."""
        old = self._coords
        try:
            self.set_coords(coords)
            yield
        except SolverError:
            self.set_coords(old)
            raise

    def set_coords(self, coords):
        """Move the nodes (same topology); raises MeshError on an inverted cell, leaves geometry unchanged."""
        coords = self.mesh.points if coords is None else np.asarray(coords, dtype=np.float64)
        if coords.shape != self.mesh.points.shape:
            raise SolverError(f"coords has shape {coords.shape}; expected {self.mesh.points.shape} (n_nodes x 2)")
        if coords is not self._coords and not np.array_equal(coords, self._coords):
            check_cells(coords, self.mesh.triangles, what="moved mesh")
            self.dm.geometry.x[:, :2] = coords[self.node_of_geom]
            self._coords = coords.copy()


def newton_solver(problem, rtol=1e-9, atol=1e-10, max_it=25):
    """dolfinx NewtonSolver (residual criterion) with a direct MUMPS LU, no error on divergence."""
    from mpi4py import MPI
    from dolfinx.nls.petsc import NewtonSolver

    import dolfinx

    dolfinx.log.set_log_level(dolfinx.log.LogLevel.ERROR)  # failures are reported as SolverError
    solver = NewtonSolver(MPI.COMM_SELF, problem)
    solver.convergence_criterion = "residual"
    solver.rtol, solver.atol, solver.max_it = rtol, atol, max_it
    solver.error_on_nonconvergence = False
    ksp = solver.krylov_solver
    ksp.setType("preonly")
    pc = ksp.getPC()
    pc.setType("lu")
    pc.setFactorSolverType("mumps")
    return solver


def newton_solve(solver, u, what):
    """Run Newton on Function u; raise SolverError (u left as is) if it diverges or gives NaN."""
    try:
        n_it, converged = solver.solve(u)
    except RuntimeError as e:  # PETSc / factorisation failures
        raise SolverError(f"{what}: Newton failed ({e})") from None
    if not converged or not np.all(np.isfinite(u.x.array)):
        raise SolverError(f"{what}: Newton did not converge in {solver.max_it} iterations")
    return n_it


class Result:
    """One solve: `fields` (n_nodes, k) at the mesh nodes, column `names`, `cl`, `cd`, `info` dict."""

    def __init__(self, fields, names, cl, cd, info=None):
        self.fields = np.asarray(fields, dtype=np.float64)
        self.names = tuple(names)
        self.cl, self.cd = float(cl), float(cd)
        self.info = dict(info or {})

    def __getitem__(self, name):
        return self.fields[:, self.names.index(name)]

    def __repr__(self):
        return f"Result(cl={self.cl:.6g}, cd={self.cd:.6g}, fields={self.fields.shape} {self.names})"


class LazySolver:
    """Picklable solver base: only the mesh and options travel; dolfinx objects are built on first use."""

    def __init__(self, mesh, **options):
        from .mesh import Mesh

        if not isinstance(mesh, Mesh):
            mesh = Mesh.read(mesh)
        mesh.require_markers()
        mesh.require_closed_markers()
        self.mesh = mesh
        self.options = options
        self._built = None

    def __getstate__(self):
        return {"mesh": self.mesh, "options": self.options}

    def __setstate__(self, state):
        self.mesh, self.options, self._built = state["mesh"], state["options"], None

    @property
    def built(self):
        if self._built is None:
            self._built = self._build()
        return self._built

    def _build(self):
        raise NotImplementedError
