"""Where tests find ../shared/data (beside the project root) and how they skip without it."""
import os

import pytest

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
MESHES = os.path.join(DATA, "meshes")
needs_meshes = pytest.mark.skipif(not os.path.isdir(MESHES), reason=f"CFD-GCN meshes not found at {MESHES}")


def su2(name: str) -> str:
    """Path of a CFD-GCN NACA0012 mesh: name in xcoarse, coarse, fine."""
    return os.path.join(MESHES, f"NACA0012_{name}.su2")
