"""Schema validation and case-file errors name the key and the fix."""
import pytest

from zosci import cases
from zosci.config import Field, Schema
from zosci.errors import ConfigError

SCHEMA = Schema({
    "optimizer": {
        "lr": Field(float, 1e-3, min=0, min_exclusive=True),
        "steps": Field(int, 10, min=1, max=100),
        "name": Field(str, "zoadam", choices=["zoadam", "zosgd"]),
        "samplers": Field(list, ["gaussian"], item=str, choices=["gaussian", "sphere"], min=1),
    },
    "verbose": Field(bool, False),
})
BASE = {"kind": "estimator_study", "name": "t"}


def check(raw, *fragments):
    with pytest.raises(ConfigError) as err:
        SCHEMA.validate(raw)
    for f in fragments:
        assert f in str(err.value), str(err.value)
    return str(err.value)


def test_defaults_filled_and_int_accepted_for_float():
    cfg = SCHEMA.validate({**BASE, "optimizer": {"lr": 1}})
    assert cfg["optimizer"] == {"lr": 1.0, "steps": 10, "name": "zoadam", "samplers": ["gaussian"]}
    assert isinstance(cfg["optimizer"]["lr"], float)
    assert cfg["seed"] == 0 and cfg["output"] == "runs" and cfg["description"] == "" and cfg["verbose"] is False


def test_unknown_key_suggests_closest():
    check({**BASE, "optimizer": {"lrr": 0.1}}, "optimizer.lrr", "did you mean 'lr'")
    check({**BASE, "seeed": 1}, "seeed", "did you mean 'seed'")


def test_wrong_types():
    check({**BASE, "optimizer": {"lr": "fast"}}, "optimizer.lr", "must be a number", "str")
    check({**BASE, "optimizer": {"steps": 1.5}}, "optimizer.steps", "integer")
    check({**BASE, "optimizer": {"steps": True}}, "optimizer.steps", "integer")  # bool is not an int
    check({**BASE, "verbose": 1}, "verbose", "true or false")
    check({**BASE, "optimizer": {"samplers": ["gaussian", 3]}}, "optimizer.samplers[1]")
    check({**BASE, "optimizer": 3}, "optimizer", "must be a table")


def test_ranges_and_choices():
    assert check({**BASE, "optimizer": {"lr": -1}}, "optimizer.lr") == "optimizer.lr: must be > 0, got -1.0"
    check({**BASE, "optimizer": {"steps": 101}}, "optimizer.steps", "<= 100")
    check({**BASE, "optimizer": {"name": "zoadm"}}, "optimizer.name", "did you mean 'zoadam'")
    check({**BASE, "optimizer": {"samplers": ["sphear"]}}, "optimizer.samplers[0]", "'sphere'")
    check({**BASE, "optimizer": {"samplers": []}}, "optimizer.samplers", "length must be >= 1")


def test_missing_required():
    check({"kind": "estimator_study"}, "name: required")


def test_case_kind_errors(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text('kind = "estimator_studdy"\nname = "x"\n')
    with pytest.raises(ConfigError, match="kind: unknown case kind 'estimator_studdy'; did you mean 'estimator_study'"):
        cases.load_case(path)
    path.write_text('name = "x"\n')
    with pytest.raises(ConfigError, match="kind: required"):
        cases.load_case(path)
    monkeypatch.setitem(cases.KINDS, "ghost", "zosci.cases.no_such_module")
    path.write_text('kind = "ghost"\nname = "x"\n')
    with pytest.raises(ConfigError, match="kind ghost: its module zosci.cases.no_such_module is not available"):
        cases.load_case(path)


def test_case_schema_errors_name_the_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('kind = "estimator_study"\nname = "x"\n[optimizer]\nlr = -1\n')
    with pytest.raises(ConfigError, match=r"optimizer\.lr: must be > 0, got -1"):
        cases.load_case(path)
    path.write_text('kind = "estimator_study"\nname = "x"\n[study]\nsteps = "many"\n')
    with pytest.raises(ConfigError, match=r"study\.steps: must be an integer"):
        cases.load_case(path)
    path.write_text('kind = "estimator_study"\nname = \n')
    with pytest.raises(ConfigError, match="invalid TOML"):
        cases.load_case(path)


def test_shipped_cases_validate():
    from zosci.cli import case_dirs
    files = [p for d in case_dirs() for p in d.glob("estimator_study.toml")]
    assert files
    for f in files:
        cases.load_case(f)
