"""zosci.cfd: the CFD applications of the hybrid chain rule.

* ``adapt``: mesh adaptation (move a coarse mesh so its solution matches a fine one);
* ``gcn``, ``dataset``: CFD-GCN (Belbute-Peres et al., ICML 2020) with the coarse mesh
  learnable through the solver;
* ``adaptation_case``, ``gcn_case``: the case kinds ``mesh_adaptation`` and ``cfd_gcn``.

The black boxes themselves (dolfinx solvers, meshes) live in ``zosci.solvers``.
"""
