"""CFD-GCN: model shapes, exact upsampling of linear fields, cached/resumable data, ZO training, the case."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from resume import killed_and_resumed
from shared_data import needs_meshes

from zosci.cli import main
from zosci.cfd.dataset import generate, grid
from zosci.cfd.gcn import CFDGCN, Upsampler, node_features
from zosci.solvers import PotentialFlow, mesh_to_graph, naca_mesh

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def meshes():
    return naca_mesh(n_airfoil=10, n_farfield=8, radius=10.0), naca_mesh(n_airfoil=24, n_farfield=16, radius=10.0)


class Counting:
    """A solver that counts its solves and can be told to die after k of them."""

    def __init__(self, solver, die_after=None):
        self.solver, self.mesh, self.calls, self.die_after = solver, solver.mesh, 0, die_after

    def solve(self, **kw):
        if self.die_after is not None and self.calls >= self.die_after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.solver.solve(**kw)


def test_model_and_features_shapes(meshes):
    _, fine = meshes
    g = mesh_to_graph(fine)
    x = node_features(fine.points, g.is_airfoil, 2.0, 0.4)
    assert x.shape == (len(fine.points), 5)
    model = CFDGCN(x.shape[1] + 3, hidden=16, layers=4)
    out = model(torch.cat([x, torch.zeros(len(x), 3)], 1), g.edge_index)
    assert out.shape == (len(fine.points), 3) and len(model.convs) == 4


@pytest.mark.parametrize("method", ["barycentric", "knn"])
def test_upsampling_weights(meshes, method):
    coarse, fine = meshes
    up = Upsampler(fine.points, coarse.triangles, method)
    idx, w = up.weights(torch.as_tensor(coarse.points))
    assert torch.allclose(w.sum(1), torch.ones(len(w), dtype=w.dtype))
    lin = lambda p: torch.as_tensor(np.column_stack([1 + 2 * p[:, 0] - 3 * p[:, 1], 0.5 * p[:, 1]]))  # noqa: E731
    values = lin(coarse.points)
    z = up(values, coarse.points)
    err = (z - lin(fine.points)).abs().max(1).values
    if method == "barycentric":
        inside = torch.as_tensor(up.barycentric.inside(coarse.points))
        assert err[inside].max() < 1e-10  # linear fields exactly inside the coarse domain
        lo, hi = values.min(0).values, values.max(0).values
        assert (~inside).any() and (z >= lo).all() and (z <= hi).all()  # outside (curved arcs): clamped, no overshoot
    else:
        assert err.max() > 1e-6  # inverse distance is not exact, which is why barycentric is the default


def test_dataset_caches_and_resumes(tmp_path, meshes):
    coarse, _ = meshes
    cond = grid((0.2, 0.4), aoa_step=10.0)
    dying = Counting(PotentialFlow(coarse), die_after=3)
    with pytest.raises(KeyboardInterrupt):
        generate(dying, cond, tmp_path, progress=False, chunk=1)
    rest = Counting(PotentialFlow(coarse))
    data = generate(rest, cond, tmp_path, progress=False)
    assert rest.calls == len(cond) - 3  # continued where it stopped
    assert len(data) + len(data.failed) == len(cond) and data.fields.shape[1:] == (len(coarse.points), 3)
    again = Counting(PotentialFlow(coarse))
    data2 = generate(again, cond, tmp_path, progress=False)
    assert again.calls == 0 and np.array_equal(data2.fields, data.fields)
    tr, te = data.split([0.2], [0.4])
    assert (data.conditions[te, 1] == 0.4).all() and (data.conditions[tr, 1] == 0.2).all()
    assert len(set(tr) | set(te)) == len(data)
    larger = Counting(PotentialFlow(coarse))
    generate(larger, grid((0.2, 0.3, 0.4), aoa_step=10.0), tmp_path, progress=False)
    assert larger.calls == 3  # another grid reuses every condition already solved


def test_the_papers_splits():
    from zosci.cfd.dataset import SPLITS, split_machs

    interp, general = SPLITS["interpolation"], SPLITS["generalization"]
    assert interp == ((0.2, 0.3, 0.35, 0.4, 0.5, 0.55, 0.6, 0.7), (0.25, 0.45, 0.65))
    assert max(general[0]) < min(general[1]) and min(general[0]) == 0.2 and max(general[1]) == 0.8
    assert len(grid(interp[0] + interp[1])) == 21 * 11  # aoa -10..10 in 1-degree steps
    with pytest.raises(ValueError, match="share"):
        split_machs("interpolation", train=[0.2, 0.3], test=[0.3])


def test_failed_conditions_are_skipped_and_recorded(tmp_path, meshes):
    coarse, _ = meshes
    cond = np.array([[0.0, 0.3], [2.0, 1.2]])  # Mach 1.2: the solver refuses it
    data = generate(PotentialFlow(coarse), cond, tmp_path, progress=False)
    assert len(data) == 1 and data.failed[0][:2] == (2.0, 1.2) and "mach" in data.failed[0][2]


def tiny_config(tmp_path, **over):
    from zosci.cfd.gcn_case import SCHEMA

    raw = {"kind": "cfd_gcn", "name": "t", "mesh": {"source": "naca"},
           "data": {"aoa_step": 10.0, "train_mach": [0.2, 0.3], "test_mach": [0.25],
                    "cache_dir": str(tmp_path / "cache")},
           "train": {"epochs": 2, "batch": 2}, "model": {"hidden": 16, "layers": 3}, "zo": {"queries": 2}}
    for k, v in over.items():
        raw[k].update(v)
    return SCHEMA.validate(raw)


def test_zo_training_moves_coarse_mesh_and_reduces_loss(tmp_path):
    from zosci.cfd.gcn_case import Problem, Trainer

    cfg = tiny_config(tmp_path)
    prob = Problem(cfg, progress=False)
    tr = Trainer(prob, cfg, "zo", "dap")
    before, _ = tr.evaluate(prob.train)
    tr.train_epoch()
    tr.train_epoch()
    after, _ = tr.evaluate(prob.train)
    assert after < before
    assert tr.evaluations == 2 * len(prob.train) * 2  # forward estimator: `queries` solves per condition
    assert tr.zo_grad_norm > 0 and tr.displacement() > 0
    moved = tr.coords().detach().numpy() - prob.coarse.points
    assert np.abs(moved[prob.coarse.node_type() != 0]).max() == 0  # boundary nodes stay put


def test_node_carried_model_enters_the_zo_estimate(tmp_path):
    """zo.jacobian_model = "node_carried" gives the batched op the model (its rows' maps are built)."""
    from zosci.cfd.gcn_case import Problem, Trainer

    cfg = tiny_config(tmp_path, zo={"jacobian_model": "node_carried"})
    prob = Problem(cfg, progress=False)
    tr = Trainer(prob, cfg, "zo", "gaussian")
    tr.train_epoch()
    assert tr.box.jacobian_model is not None and len(tr.box.last.models) == len(tr.box.last.rows)
    jv = tr.box.last.models[0](torch.ones(len(prob.coarse.points) * 2, dtype=torch.float64))
    assert jv.shape == (len(prob.coarse.points), 3) and float(jv.abs().sum()) > 0


def write_case(tmp_path, output):
    text = (ROOT / "cases" / "cfd_gcn.toml").read_text()
    text = text.replace('output = "runs"', f'output = "{(tmp_path / output).as_posix()}"')
    text = text.replace('source = "cfdgcn"', 'source = "naca"').replace("aoa_step = 1.0", "aoa_step = 10.0\ntrain_mach = [0.2, 0.3]\ntest_mach = [0.25]")
    text = text.replace("epochs = 10", "epochs = 3").replace("queries = 4", "queries = 2")
    text = text.replace('cache_dir = "runs/cfd_gcn_cache"', f'cache_dir = "{(tmp_path / "cache").as_posix()}"')
    text = text.replace("hidden = 64", "hidden = 16").replace("batch = 4", "batch = 2")
    path = tmp_path / f"{output}.toml"
    path.write_text(text)
    return path


def test_shipped_case_validates():
    assert main(["validate", str(ROOT / "cases" / "cfd_gcn.toml")]) == 0


def losses(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_case_kill_and_resume_matches_uninterrupted(tmp_path):
    # dies after logging epoch 2; the checkpoint is at epoch 1
    full, killed = killed_and_resumed(lambda name: write_case(tmp_path, name), tmp_path, 2)
    assert (full / "loss.png").stat().st_size > 1000 and (full / "cp_test.png").exists()
    assert losses(killed) == losses(full) and len(losses(full)) == 3


@needs_meshes
def test_default_mesh_dir_finds_the_shared_meshes_from_any_working_directory(tmp_path, monkeypatch):
    """The default mesh.mesh_dir (../shared/data/meshes) is the folder beside the project root, also when
    the working directory is elsewhere (it resolved one level too high once: cfd/ sits in the root)."""
    from zosci.cfd.gcn_case import SCHEMA, load_meshes

    monkeypatch.chdir(tmp_path)
    coarse, fine = load_meshes(SCHEMA.validate({"kind": "cfd_gcn", "name": "x"})["mesh"])
    assert (len(coarse.points), len(fine.points)) == (353, 6684)
