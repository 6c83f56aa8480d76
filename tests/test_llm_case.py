"""The llm_finetune case: schema, a short run on a tiny model and tiny SST-2-format data, kill and resume."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
from zosci import llm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"


def _tsv(path, rows):
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("case")
    model = llm.models.random_model(tmp / "bert", "bert", "tiny")
    from test_llm_features import st_folder
    st = st_folder(tmp / "st", {"pooling_mode": "mean"}, normalize=True)  # sequence classification, sparse MeZO
    words = ["great fun", "awful", "moving and wonderful", "dull", "a delight", "tedious mess"]
    rows = [(f"{w} {i}", int(j % 2 == 0)) for i in range(4) for j, w in enumerate(words)]
    data = tmp / "sst2"
    data.mkdir()
    for split in ("train", "dev", "test"):
        _tsv(data / f"{split}.tsv", rows)
    return tmp, {"masked-lm": model, "sequence-classification": st}, data


def _case(tmp, models, data, method="hozo", bits=4, task="masked-lm"):
    text = f"""kind = "llm_finetune"
name = "tiny-{method}"
output = "{tmp / 'runs'}"
[model]
path = "{models[task]}"
task = "{task}"
bits = {bits}
[data]
root = "{data}"
k = 4
batch_size = 4
[method]
name = "{method}"
lr = 0.5
mu = 0.01
[train]
steps = 6
eval_every = 2
checkpoint_every = 2
"""
    path = tmp / f"{method}-{task}.toml"
    path.write_text(text)
    return path


def _zosci(*args, env=None):
    return subprocess.run([sys.executable, "-m", "zosci", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)


def _run_dir(out):
    line = next(l for l in out.splitlines() if l.startswith("run folder:"))
    return Path(line.split(":", 1)[1].strip().split(" (")[0])


@pytest.mark.slow
@pytest.mark.parametrize("method,task", [("hozo", "masked-lm"), ("mezo", "masked-lm"),
                                         ("mezo", "sequence-classification")])
def test_kill_and_resume_equals_uninterrupted(setup, method, task):
    """QZO/HoZO checkpoint their scales; MeZO checkpoints seeds (and, with sparse embeddings, the rows
    each step read) and replays them."""
    tmp, model, data = setup
    case = _case(tmp, model, data, method=method, bits=4 if method == "hozo" else 0, task=task)
    full = _zosci("run", case)
    assert full.returncode == 0, full.stderr[-2000:]
    full_dir = _run_dir(full.stdout)
    killed = _zosci("run", case, env={"ZOSCI_KILL_AT_STEP": "3"})
    assert killed.returncode == 137
    killed_dir = _run_dir(killed.stdout)
    resumed = _zosci("run", "--resume", killed_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (killed_dir / "metrics.csv").read_text() == (full_dir / "metrics.csv").read_text()
    key = "records" if method == "mezo" else "trained"
    a = torch.load(full_dir / "checkpoints" / "last.pt", weights_only=False)["state"]
    b = torch.load(killed_dir / "checkpoints" / "last.pt", weights_only=False)["state"]
    if method == "mezo":
        assert "trained" not in a and len(a["records"]) == 6 and a["records"] == b["records"]
        assert all(len(r) == (3 if task == "sequence-classification" else 2) for r in a["records"])
    else:
        assert all(torch.equal(x, y) for x, y in zip(a[key], b[key]))
    assert (full_dir / "loss.png").is_file() and (full_dir / "accuracy.png").is_file()


def test_shipped_cases_validate():
    from zosci.cases import load_case
    if not SST2.is_dir():
        pytest.skip(f"SST-2 not found at {SST2} (the shipped cases point there)")
    for name in ("sst2_minilm_int4", "sst2_minilm_qzo", "sst2_minilm_mezo"):
        module, config, _ = load_case(ROOT / "cases" / f"{name}.toml")
        assert config["kind"] == "llm_finetune"


def test_qzo_needs_bits(setup):
    from zosci.cases import validate
    from zosci.errors import ConfigError
    tmp, model, data = setup
    import tomllib
    raw = tomllib.loads(_case(tmp, model, data, method="qzo", bits=0).read_text())
    with pytest.raises(ConfigError, match="model.bits"):
        validate(raw)
