"""The node-carried Jacobian model: a control variate for black boxes that map node positions to nodal fields.

When a mesh moves, the field itself barely changes; what changes most is where the nodes sample it.
So each nodal value is modelled as carried along with its node,

    du_i = grad u_h(x_i) . dx_i,      dx = (d coords / d x) v,

with grad u_h(x_i) the recovered nodal gradient: the area-weighted mean of the P1 gradients of the
cells around node i. ``NodeCarried`` is a ``jacobian_model`` for ``zosci.BlackBox``: given the point x
and the box's output there, it returns the linear map v -> M v with
M = blockdiag(grad u_h(x_i)) (d coords / d x), written in torch.
"""
from __future__ import annotations

import numpy as np
import torch


def recovered_gradient(coords: torch.Tensor, triangles, values: torch.Tensor) -> torch.Tensor:
    """(n, 2, F) nodal gradients of the P1 fields values (n, F) (or (n,): F = 1) on the mesh at coords (n, 2):
    per node, the area-weighted mean of its cells' constant gradients."""
    tri = torch.as_tensor(np.asarray(triangles), dtype=torch.long)
    vals = values.reshape(len(coords), -1).to(coords.dtype)
    p = coords[tri]                                                    # (m, 3, 2)
    e = torch.roll(p, -2, dims=1) - torch.roll(p, -1, dims=1)          # p_{k+2} - p_{k+1}
    area = 0.5 * (e[:, 0, 0] * e[:, 1, 1] - e[:, 0, 1] * e[:, 1, 0])
    basis = torch.stack([-e[..., 1], e[..., 0]], dim=-1) / (2 * area[:, None, None])  # grad lambda_k (m, 3, 2)
    cell_grad = torch.einsum("mkd,mkf->mdf", basis, vals[tri])        # (m, 2, F)
    weight = area.abs()
    num = coords.new_zeros(len(coords), *cell_grad.shape[1:])
    den = coords.new_zeros(len(coords))
    for k in range(3):
        num.index_add_(0, tri[:, k], weight[:, None, None] * cell_grad)
        den.index_add_(0, tri[:, k], weight)
    return num / den[:, None, None]


class NodeCarried:
    """jacobian_model(x, y) -> (v -> J_model v), du_i = grad u_h(x_i) . dx_i (module docstring).

    triangles: the mesh cells; to_coords: x -> node coords (n, 2), a torch function (default: x are the
    coords themselves). y: the nodal values (n,) or (n, F) at x (the box's output there)."""

    def __init__(self, triangles, to_coords=None):
        self.triangles = np.asarray(triangles, dtype=np.int64)
        self.to_coords = to_coords if to_coords is not None else (lambda x: x.reshape(-1, 2))

    def matrix(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """M (numel(values), numel(x)) at x, for the nodal values (n,) or (n, F) there."""
        x = x.detach().to("cpu", torch.float64)
        coords = self.to_coords(x)
        grad = recovered_gradient(coords.detach(), self.triangles, torch.as_tensor(values, dtype=torch.float64))
        dcoords = torch.autograd.functional.jacobian(self.to_coords, x, vectorize=True)  # (n, 2, *x.shape)
        dcoords = dcoords.reshape(*coords.shape, -1)                                   # (n, 2, dim)
        return torch.einsum("ndf,ndk->nfk", grad, dcoords).reshape(-1, x.numel())

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        m, shape = self.matrix(x, torch.as_tensor(y).detach()), tuple(torch.as_tensor(y).shape)
        return lambda v: (m.to(v.dtype) @ v.reshape(-1)).reshape(shape)


__all__ = ["recovered_gradient", "NodeCarried"]
