"""CFD black boxes: airfoil meshes, full-potential and Navier-Stokes solvers, parallel batches.

    from zosci.solvers import Mesh, naca_mesh, PotentialFlow, NavierStokes, solve_batch, SolverPool
    solver = PotentialFlow("../shared/data/meshes/NACA0012_coarse.su2")
    r = solver.solve(aoa=2.0, mach=0.5)      # r.fields, r.names, r.cl, r.cd

dolfinx is imported only when a solver is first used, so this package imports cheaply.
"""
from .errors import MeshError, SolverError
from .fem import Result
from .graph import mesh_to_graph
from .mesh import Mesh
from .naca import airfoil_mesh, naca_mesh, rae2822_surface
from .navier_stokes import NavierStokes
from .pool import SolverPool, dask_executor, solve_batch
from .potential import PotentialFlow

__all__ = ["Mesh", "MeshError", "SolverError", "Result", "mesh_to_graph", "naca_mesh", "airfoil_mesh",
           "rae2822_surface", "NavierStokes",
           "PotentialFlow", "SolverPool", "solve_batch", "dask_executor"]
