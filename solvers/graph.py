"""Mesh -> PyG graph: nodes are mesh nodes, edges the cell edges in both directions."""
import numpy as np


def mesh_to_graph(mesh, coords=None):
    """torch_geometric Data with pos (n, 2), edge_index (2, 2E) undirected, node_type
    (0 interior, 1 airfoil, 2 farfield) and boolean masks is_airfoil / is_farfield."""
    import torch
    from torch_geometric.data import Data

    pos = mesh.points if coords is None else np.asarray(coords, dtype=np.float64)
    e = mesh.edges()
    edge_index = np.concatenate([e, e[:, ::-1]]).T
    t = mesh.node_type()
    return Data(pos=torch.as_tensor(pos, dtype=torch.float32),
                edge_index=torch.as_tensor(np.ascontiguousarray(edge_index), dtype=torch.long),
                node_type=torch.as_tensor(t), is_airfoil=torch.as_tensor(t == 1),
                is_farfield=torch.as_tensor(t == 2), num_nodes=len(pos))
