"""MeZO / QZO / HoZO on tiny randomly initialised models: closure count, exact restoration, positivity,
causal-LM paths (OPT, Llama), a short fine-tune where the loss decreases, clear errors."""
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
from zosci import llm  # noqa: E402
from zosci.errors import ConfigError  # noqa: E402

SENTENCES = ["a great and moving film", "dull , tedious and bad", "wonderful acting", "a terrible mess"]
LABELS = torch.tensor([1, 0, 1, 0])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {arch: llm.models.random_model(root / arch, arch, "tiny") for arch in ("bert", "opt", "llama")}


def _model(folders, arch="bert", task=None, bits=4):
    task = task or {"bert": "masked-lm", "opt": "causal-lm", "llama": "causal-lm"}[arch]
    model = llm.load(folders[arch], task=task)
    return llm.quantize(model, bits=bits, group_size=64) if bits else model


def _counting_closure(model, record=None):
    batch = model.encode(SENTENCES)
    calls = []

    def closure():
        calls.append(1)
        if record is not None:
            record.append([p.detach().clone() for p in record.params])
        return float(model.loss(batch, LABELS))
    return closure, calls


class _Record(list):
    def __init__(self, params):
        super().__init__()
        self.params = params


@pytest.mark.parametrize("method", ["mezo", "qzo", "hozo"])
def test_forward_step_calls_closure_twice_and_restores_bit_for_bit(folders, method):
    model = _model(folders, bits=None if method == "mezo" else 4)
    opt = llm.build(method, model, lr=0.0, mu=1e-2, estimator="forward")
    params = [p for g in opt.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    record = _Record(params)
    closure, calls = _counting_closure(model, record)
    loss = opt.step(closure)
    assert len(calls) == 2 and opt.last_info.evaluations == 2
    assert isinstance(loss, float)
    assert all(torch.equal(a, b) for a, b in zip(record[0], before))  # f(x) at the unperturbed weights
    assert any(not torch.equal(a, b) for a, b in zip(record[1], before))  # then a perturbed point
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # lr = 0: restored exactly


@pytest.mark.parametrize("method", ["mezo", "qzo"])
def test_two_sided_is_the_default_of_mezo_and_qzo(folders, method):
    """MeZO's and QZO's estimator: (f(x + mu v) - f(x - mu v)) / (2 mu), two closure calls, no f(x)."""
    model = _model(folders, bits=None if method == "mezo" else 4)
    opt = llm.build(method, model, lr=0.0, mu=1e-2)
    assert opt.estimator.name == "central"
    params = [p for g in opt.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    record = _Record(params)
    closure, calls = _counting_closure(model, record)
    opt.step(closure)
    assert len(calls) == 2
    plus = torch.cat([(a - b).view(-1) for a, b in zip(record[0], before)])
    minus = torch.cat([(a - b).view(-1) for a, b in zip(record[1], before)])
    assert float(plus.abs().max()) > 0 and torch.allclose(plus, -minus, atol=1e-6)
    assert all(torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("method,manifold", [("qzo", "euclidean"), ("hozo", "orthant"), ("mezo", "euclidean")])
def test_update_is_applied_to_the_exactly_restored_weights(folders, method, manifold):
    model = _model(folders, bits=None if method == "mezo" else 4)
    lr = 1e-3
    opt = llm.build(method, model, lr=lr, mu=1e-2, **({"clip": None} if method == "qzo" else {}))
    params = [p for g in opt.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    closure, _ = _counting_closure(model)
    opt.step(closure)
    (query,) = opt.last_info.kept
    for k, (p, b) in enumerate(zip(params, before)):
        g = torch.zeros_like(b).add_(query.direction.part(k), alpha=query.delta)
        expected = b.clone().add_(g, alpha=-lr) if manifold == "euclidean" else b.clone().mul_(torch.exp(g * -lr))
        assert torch.equal(p, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method,manifold", [("qzo", "euclidean"), ("hozo", "orthant"), ("mezo", "euclidean")])
def test_cuda_step_restores_and_updates_on_the_device(folders, method, manifold):
    """On CUDA: a step with lr = 0 restores every weight bit for bit; with lr > 0 the update is the one the
    step's direction (regenerated on the device) and delta give, and nothing leaves the device."""
    model = _model(folders, bits=None if method == "mezo" else 4).to("cuda")
    closure, _ = _counting_closure(model)
    still = llm.build(method, model, lr=0.0, mu=1e-2)
    params = [p for g in still.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    still.step(closure)
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    lr = 1e-3
    opt = llm.build(method, model, lr=lr, mu=1e-2, **({"clip": None} if method == "qzo" else {}))
    opt.step(closure)
    (query,) = opt.last_info.kept
    assert query.delta != 0.0
    for k, (p, b) in enumerate(zip(params, before)):
        assert p.device.type == "cuda"
        g = torch.zeros_like(b).add_(query.direction.part(k), alpha=query.delta)
        expected = b.clone().add_(g, alpha=-lr) if manifold == "euclidean" else b.clone().mul_(torch.exp(g * -lr))
        assert torch.equal(p, expected)


def test_hozo_keeps_scales_positive_where_qzo_does_not(folders):
    lr = 10.0  # lr |g| >> s ~ 1e-2: a euclidean step overshoots zero; s exp(-lr g) cannot
    qzo_model, hozo_model = _model(folders), _model(folders)
    llm.QZO(qzo_model, lr=lr, mu=1e-2, clip=None).step(_counting_closure(qzo_model)[0])
    llm.HoZO(hozo_model, lr=lr, mu=1e-2).step(_counting_closure(hozo_model)[0])
    assert min(float(s.min()) for s in llm.scales(qzo_model)) < 0
    assert all(bool((s > 0).all()) and bool(torch.isfinite(s).all()) for s in llm.scales(hozo_model))
    assert any(not torch.equal(a, b) for a, b in zip(llm.scales(hozo_model), llm.scales(_model(folders))))


@pytest.mark.parametrize("sampler,estimator", [("sphere", "forward"), ("dap", "forward"), ("gaussian", "p2"),
                                               ("gaussian", "central")])
def test_samplers_and_estimators(folders, sampler, estimator):
    model = _model(folders)
    opt = llm.HoZO(model, lr=1e-3, mu=1e-2, sampler=sampler, estimator=estimator, momentum=0.9)
    closure, calls = _counting_closure(model)
    for _ in range(2):
        opt.step(closure)
    assert opt.last_info.evaluations >= 2 and len(calls) >= 4
    if estimator in ("forward", "central"):
        assert len(calls) == 4
    assert all(bool((s > 0).all()) for s in llm.scales(model))


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_causal_lm_load_quantize_step(folders, arch):
    model = llm.load(folders[arch], task="causal-lm")
    head = model.hf.get_output_embeddings().weight.nbytes  # float, kept out of quantization
    fp32 = llm.weight_bytes(model, linear_only=True) - head
    llm.quantize(model, bits=4, group_size=64)
    assert llm.weight_bytes(model, linear_only=True) - head <= 0.2 * fp32
    assert model.hf.get_output_embeddings().__class__ is torch.nn.Linear  # the LM head stays float
    logits = model.class_logits(model.encode(SENTENCES))
    assert logits.shape == (4, 2) and bool(torch.isfinite(logits).all())
    opt = llm.HoZO(model, lr=1e-2, mu=1e-2)
    before = [s.clone() for s in llm.scales(model)]
    closure, calls = _counting_closure(model)
    opt.step(closure)
    assert len(calls) == 2
    assert any(not torch.equal(s, b) for s, b in zip(llm.scales(model), before))


def test_short_fine_tune_decreases_loss(folders):
    model = _model(folders, arch="bert", task="masked-lm")  # prompt scoring of the label words at [MASK]
    batch = model.encode(SENTENCES)
    start = float(model.loss(batch, LABELS))
    opt = llm.HoZO(model, lr=1.0, mu=1e-2, seed=1)
    for _ in range(40):
        llm.train_step(model, opt, SENTENCES, LABELS)
    end = float(model.loss(batch, LABELS))
    assert end < start - 0.02, (start, end)


def test_first_order_reference_step(folders):
    model = _model(folders, arch="bert", task="sequence-classification", bits=None)
    opt = llm.FirstOrder(model, lr=1e-3)
    batch = model.encode(SENTENCES)
    start = float(model.loss(batch, LABELS).detach())
    for _ in range(5):
        llm.train_step(model, opt, SENTENCES, LABELS)
    assert float(model.loss(batch, LABELS).detach()) < start


def test_first_order_on_the_scales_only(folders):
    """params="scales": exact gradients of the int4 scales (central differences agree), nothing else moves."""
    model = _model(folders, arch="bert", task="sequence-classification")
    batch = model.encode(SENTENCES)
    opt = llm.FirstOrder(model, lr=1e-3, optimizer="sgd", params="scales")
    scales = llm.scales(model)
    assert [id(p) for g in opt.param_groups for p in g["params"]] == [id(s) for s in scales]
    others = {n: p.detach().clone() for n, p in model.named_parameters() if all(p is not s for s in scales)}
    opt.zero_grad()
    model.loss(batch, LABELS).backward()
    grads = [s.grad.clone() for s in scales]
    norm = sum(float((g ** 2).sum()) for g in grads) ** 0.5
    assert norm > 0

    def loss_along(t):  # f(s + t g / |g|): its slope at 0 is |g|
        with torch.no_grad():
            for s, g in zip(scales, grads):
                s.add_(g, alpha=t / norm)
            value = float(model.loss(batch, LABELS))
            for s, g in zip(scales, grads):
                s.sub_(g, alpha=t / norm)
        return value
    h = 1e-3  # float32 loss: a step above its round-off, below the curvature (2 % covers both here)
    assert (loss_along(h) - loss_along(-h)) / (2 * h) == pytest.approx(norm, rel=2e-2)
    before = [x.detach().clone() for x in scales]
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(scales, before))
    assert all(torch.equal(p, others[n]) for n, p in model.named_parameters() if n in others)
    with pytest.raises(ConfigError, match="params"):
        llm.FirstOrder(model, params="head")


def test_state_dict_resume_is_exact(folders):
    def run(steps, resume_at=None):
        model = _model(folders)
        opt = llm.HoZO(model, lr=1e-2, mu=1e-2, seed=3)
        for i in range(steps):
            if i == resume_at:
                state = {"opt": opt.state_dict(), "scales": [s.clone() for s in llm.scales(model)]}
                model = _model(folders)
                for s, saved in zip(llm.scales(model), state["scales"]):
                    s.data.copy_(saved)
                opt = llm.HoZO(model, lr=1e-2, mu=1e-2, seed=999)
                opt.load_state_dict(state["opt"])
            llm.train_step(model, opt, SENTENCES, LABELS)
        return llm.scales(model)
    assert all(torch.equal(a, b) for a, b in zip(run(4), run(4, resume_at=2)))


def test_clear_errors(tmp_path, folders):
    with pytest.raises(ConfigError, match="config.json missing"):
        llm.load(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="task"):
        llm.load(folders["bert"], task="translation")
    with pytest.raises(ConfigError, match="llm.quantize"):
        llm.HoZO(_model(folders, bits=None))
