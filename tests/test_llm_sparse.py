"""MeZO's sparse embeddings: only the rows a batch reads move, a replay of the records is exact, and the
estimate is unbiased on those rows with the dense one's delta law, and zero elsewhere."""
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
from zosci import llm  # noqa: E402
from zosci.errors import ConfigError  # noqa: E402
from zosci.llm.sparse import SparseZOSGD  # noqa: E402

from test_llm_features import st_folder  # noqa: E402

SENTENCES = ["a great and moving film", "dull , tedious and bad", "wonderful acting", "a terrible mess"]
LABELS = torch.tensor([1, 0, 1, 0])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return st_folder(tmp_path_factory.mktemp("st") / "m", {"pooling_mode": "mean"}, normalize=True)


def _weights(model):
    return [p.detach().clone() for p in llm.float_params(model)]


def test_only_used_rows_move_and_records_replay_exactly(folder):
    model = llm.load(folder, task="sequence-classification")
    start = _weights(model)
    opt = llm.MeZO(model, lr=1e-2, mu=1e-2, seed=5)
    assert isinstance(opt, SparseZOSGD)
    emb = model.hf.get_input_embeddings().weight
    batch = model.encode(SENTENCES)
    records = []
    for _ in range(3):
        opt.step(llm.closure_for(model, batch, LABELS))
        records.append(opt.last_record)
    used = torch.unique(batch["input_ids"])
    assert records[-1][2] == used.tolist()
    unused = torch.ones(emb.shape[0], dtype=torch.bool)
    unused[used] = False
    e0 = start[[id(p) for p in llm.float_params(model)].index(id(emb))]
    assert torch.equal(emb[unused], e0[unused])
    assert bool((emb[used] != e0[used]).any(dim=1).all())  # every used row moved
    replay = llm.load(folder, task="sequence-classification")
    replay_opt = llm.MeZO(replay, lr=1e-2, mu=1e-2, seed=123)
    for record in records:
        replay_opt.apply_record(record)
    assert all(torch.equal(a, b) for a, b in zip(_weights(replay), _weights(model)))


def test_sparse_needs_the_closure_ids_and_plain_sgd(folder):
    model = llm.load(folder, task="sequence-classification")
    opt = llm.MeZO(model, lr=1e-3)
    batch = model.encode(SENTENCES)
    with pytest.raises(ConfigError, match="input_ids"):
        opt.step(lambda: float(model.loss(batch, LABELS)))
    with pytest.raises(ConfigError, match="sparse_embeddings"):
        llm.MeZO(model, sparse_embeddings=True, momentum=0.9)
    assert not isinstance(llm.MeZO(model, momentum=0.9), SparseZOSGD)  # auto: dense where sparse is invalid


def _estimates(model, sparse: bool, n: int, seed: int):
    """n one-query estimates g (lr = 1: g = weights before - after) from the same weights, flattened."""
    opt = llm.MeZO(model, lr=1.0, mu=1e-4, sampler="rademacher", sparse_embeddings=sparse, seed=seed)
    closure = llm.closure_for(model, model.encode(SENTENCES), LABELS)
    params, start = llm.float_params(model), _weights(model)
    out, deltas = [], []
    for _ in range(n):
        opt.step(closure)
        deltas.append(opt.last_info.kept[0].delta)
        with torch.no_grad():
            out.append(torch.cat([(s - p).view(-1) for s, p in zip(start, params)]))
            for p, s in zip(params, start):
                p.copy_(s)
    return torch.stack(out), torch.tensor(deltas, dtype=torch.float64)


@pytest.mark.slow
def test_sparse_is_the_dense_estimator_on_the_used_rows(folder):
    model = llm.load(folder, task="sequence-classification", dtype=torch.float64)
    batch = model.encode(SENTENCES)
    params = llm.float_params(model)
    for p in params:
        p.requires_grad_(True)
    model.loss(batch, LABELS).backward()
    grad = torch.cat([p.grad.view(-1) for p in params])
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    emb = model.hf.get_input_embeddings().weight
    offset = sum(p.numel() for p in params[:[id(p) for p in params].index(id(emb))])
    used_rows = torch.unique(batch["input_ids"])
    used = torch.zeros(emb.shape[0], dtype=torch.bool)
    used[used_rows] = True
    emb_mask = torch.zeros_like(grad, dtype=torch.bool)
    emb_mask[offset:offset + emb.numel()] = True
    unused_mask = emb_mask.clone()
    unused_mask[offset:offset + emb.numel()] = ~used.repeat_interleave(emb.shape[1])
    assert float(grad[unused_mask].abs().max()) == 0.0  # the loss never reads those rows
    n = 200
    g_dense, d_dense = _estimates(model, False, 6, seed=1)  # dense steps are slow: structure only
    g_sparse, d_sparse = _estimates(model, True, n, seed=2)
    assert float(g_sparse[:, unused_mask].abs().max()) == 0.0
    assert float(g_dense[:, unused_mask].abs().max()) > 0.0
    # unbiased along the gradient, on all weights and on the used rows: E<g, grad_S> = ||grad_S||^2
    # (Rademacher v: sd of <g, grad>/||grad||^2 per draw <= sqrt(2)); tolerance 4 sd / sqrt(n)
    for subset in (torch.ones_like(grad, dtype=torch.bool), emb_mask & ~unused_mask):
        gs = grad[subset]
        r = (g_sparse[:, subset] @ gs) / (gs @ gs)
        assert abs(float(r.mean()) - 1.0) < 4 * float(r.std()) / n ** 0.5, float(r.mean())
    # delta = grad^T v + O(mu^2), and grad is 0 on the unused rows, so dense and sparse delta have one
    # law, with E[delta^2] = ||grad||^2 for Rademacher v: checked on the sparse draws
    m2 = d_sparse ** 2 / float(grad @ grad)
    assert abs(float(m2.mean()) - 1) < 4 * float(m2.std()) / n ** 0.5
    # so the sparse estimate has less noise: with Rademacher v, ||g||^2 = delta^2 d exactly, d = values perturbed
    d_all, d_unused = grad.numel(), int(unused_mask.sum())
    assert torch.allclose((g_dense ** 2).sum(1), d_dense ** 2 * d_all, rtol=1e-9)
    assert torch.allclose((g_sparse ** 2).sum(1), d_sparse ** 2 * (d_all - d_unused), rtol=1e-9)
