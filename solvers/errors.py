"""Solver exceptions: both are lost queries for the core's estimators."""
from zosci.errors import QueryError


class SolverError(QueryError):
    """A solve failed (Newton divergence, NaN, bad input); the solver stays usable."""


class MeshError(SolverError):
    """A mesh is invalid: missing marker, inverted or degenerate cell (index named)."""
