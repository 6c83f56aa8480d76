"""CFD-GCN (Belbute-Peres et al., ICML 2020): coarse solver fields upsampled to the fine mesh, refined by a GCN.

    up = Upsampler(fine_pos, coarse_triangles)        # barycentric (default) or "knn" inverse distance
    z = up(coarse_fields, coarse_pos)                 # (n_fine, k), differentiable in both arguments
    model = CFDGCN(in_features=node_features(...).shape[1] + k)
    pred = model(torch.cat([features, z], 1), edge_index)

Barycentric: zosci.cfd.adapt.Interpolator, the one P1 interpolation of the project
(mesh adaptation uses it too): each fine node takes the coarse triangle that
contains it and its barycentric coordinates, so linear fields are reproduced
exactly inside the coarse domain; a fine node outside it (on the curved airfoil
or far-field arcs between coarse boundary nodes) takes the nearest cell with
weights clamped to >= 0 and renormalized (no overshoot). The triangle is chosen
without gradient; the weights are torch functions of the coarse positions, so
moving the coarse mesh gets an exact gradient through the interpolation (and a
zeroth-order one through the solver, zosci.hybrid).
"""
from __future__ import annotations

import numpy as np
import torch


class Upsampler:
    """Coarse nodal values -> fine nodes: barycentric (zosci.cfd.adapt.Interpolator) or k-NN inverse distance."""

    def __init__(self, fine_pos, coarse_triangles, method: str = "barycentric", k: int = 3):
        if method not in ("barycentric", "knn"):
            raise ValueError(f"interpolation: must be 'barycentric' or 'knn', got {method!r}")
        from .adapt import Interpolator

        self.fine = torch.as_tensor(np.asarray(fine_pos), dtype=torch.float64)
        self.method, self.k = method, k
        self.barycentric = Interpolator(coarse_triangles, fine_pos) if method == "barycentric" else None

    def weights(self, coarse_pos: torch.Tensor):
        """(index (n_fine, m) of coarse nodes, weights (n_fine, m)); weights differentiable in coarse_pos."""
        cp = torch.as_tensor(coarse_pos).to(torch.float64)
        if self.method == "knn":
            d = torch.cdist(self.fine, cp.detach())
            idx = d.topk(self.k, largest=False).indices
            dist = (self.fine[:, None, :] - cp[idx]).norm(dim=-1).clamp_min(1e-12)
            w = 1 / dist
            return idx, w / w.sum(1, keepdim=True)
        return self.barycentric.weights(cp)

    def __call__(self, coarse_values: torch.Tensor, coarse_pos) -> torch.Tensor:
        idx, w = self.weights(coarse_pos)
        v = coarse_values[idx]  # (n_fine, m, k)
        return (w.to(v.dtype)[..., None] * v).sum(1)


def node_features(pos, is_airfoil, aoa: float, mach: float) -> torch.Tensor:
    """Fine-node inputs: asinh(position) (far field squashed), aoa/10 (degrees), Mach, airfoil flag."""
    pos = torch.as_tensor(pos, dtype=torch.float32)
    n = len(pos)
    return torch.cat([torch.asinh(pos), torch.full((n, 1), aoa / 10.0), torch.full((n, 1), float(mach)),
                      torch.as_tensor(is_airfoil, dtype=torch.float32).reshape(n, 1)], dim=1)


class CFDGCN(torch.nn.Module):
    """A GCNConv stack (ReLU between layers) from node inputs to the fine fields."""

    def __init__(self, in_features: int, hidden: int = 64, layers: int = 5, out_features: int = 3):
        super().__init__()
        from torch_geometric.nn import GCNConv

        if layers < 2:
            raise ValueError(f"layers: a GCN needs at least 2 layers, got {layers}")
        sizes = [in_features] + [hidden] * (layers - 1) + [out_features]
        self.convs = torch.nn.ModuleList(GCNConv(a, b, cached=True) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x, edge_index)
            if i < len(self.convs) - 1:
                x = torch.relu(x)
        return x
