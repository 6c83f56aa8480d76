"""The zosci command line and run folders: help, validate, an end-to-end study, kill and resume."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zosci.cli import main
from zosci.runs import KILL_ENV, Run

ROOT = Path(__file__).resolve().parent.parent

TINY = """kind = "estimator_study"
name = "tiny"
description = "a tiny study"
output = "{output}"

[problem]
name = "{problem}"
dim = 6
samples = 40

[optimizer]
name = "{opt}"
lr = 0.01
momentum = 0.5
queries = 2

[study]
samplers = ["gaussian", "dap"]
estimators = ["forward", "p3"]
steps = 12
checkpoint_every = 5
probe_every = 4
probe_queries = 8
"""


def write_case(tmp_path, output, problem="rosenbrock", opt="zoadam"):
    path = tmp_path / f"{output}.toml"
    path.write_text(TINY.format(output=(tmp_path / output).as_posix(), problem=problem, opt=opt))
    return path


def only_run(folder: Path) -> Path:
    (run,) = folder.iterdir()
    return run


def test_help_lists_shipped_cases(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "estimator_study.toml" in out and "Rosenbrock" in out  # path and description


def test_validate_and_config_error_exit_code(tmp_path, capsys):
    good = write_case(tmp_path, "out")
    assert main(["validate", str(good)]) == 0
    assert "optimizer.lr = 0.01" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("lr = 0.01", "lrr = 0.01"))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "optimizer.lrr: unknown key; did you mean 'lr'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["run", str(bad)]) == 2  # validated before any work
    assert not (tmp_path / "out").exists()


def test_python_m_zosci_reports_config_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "estimator_study"\nname = "x"\n[study]\nsteps = 0\n')
    proc = subprocess.run([sys.executable, "-m", "zosci", "validate", str(bad)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 2 and "study.steps: must be >= 1, got 0" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_estimator_study_end_to_end(tmp_path, capsys):
    case = write_case(tmp_path, "out", problem="logistic", opt="zosgd")
    assert main(["run", str(case)]) == 0
    run = only_run(tmp_path / "out")
    assert run.name.startswith("tiny-")
    assert str(run) in capsys.readouterr().out
    assert (run / "config.toml").read_text() == case.read_text()
    assert (run / "loss.png").stat().st_size > 1000 and (run / "cosine.png").exists()
    assert (run / "checkpoints" / "last.pt").exists() and "summary" in (run / "run.log").read_text()
    rows = Run.open(run).read_metrics()
    assert len(rows) == 12 * 4 and set(rows[0]) == {"step", "method", "evaluations", "loss", "cosine"}
    first, last = [r for r in rows if r["method"] == "dap/forward"][::11]
    assert float(last["loss"]) < float(first["loss"]) and int(last["evaluations"]) == 12 * 3
    assert -1 <= float(first["cosine"]) <= 1 and rows[4 * 1]["cosine"] == ""  # probes at 1, 4, 8, 12 only


def test_run_folders_are_unique(tmp_path):
    cfg = {"name": "same", "output": str(tmp_path)}
    a, b = Run.create(cfg, "x", tmp_path), Run.create(cfg, "x", tmp_path)
    a.close(), b.close()
    assert a.path != b.path and a.path.exists() and b.path.exists()


def test_killed_run_resumes_to_identical_metrics(tmp_path):
    assert main(["run", str(write_case(tmp_path, "full"))]) == 0
    full = only_run(tmp_path / "full")

    env = {**os.environ, KILL_ENV: "8"}  # dies abruptly after the first row of step 8; checkpoint is at 5
    proc = subprocess.run([sys.executable, "-m", "zosci", "run", str(write_case(tmp_path, "killed"))],
                          env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 137, proc.stderr
    killed = only_run(tmp_path / "killed")
    partial = (killed / "metrics.csv").read_text().splitlines()
    assert partial[-1].startswith("8,") and len(partial) == 1 + 7 * 4 + 1

    assert main(["run", "--resume", str(killed)]) == 0
    assert (killed / "metrics.csv").read_text() == (full / "metrics.csv").read_text()
    assert (killed / "loss.png").exists()
