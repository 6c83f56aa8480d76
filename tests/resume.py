"""Kill a case run part-way and resume it: the check every case kind must pass."""
import os
import signal
import subprocess
import sys
from pathlib import Path

from zosci.cli import main
from zosci.runs import KILL_ENV

ROOT = Path(__file__).resolve().parent.parent


def from_template(template: str, tmp_path):
    """write_case for killed_and_resumed: the case text template.format(output=tmp_path / name)."""
    def write_case(name):
        path = tmp_path / f"{name}.toml"
        path.write_text(template.format(output=(tmp_path / name).as_posix()))
        return path
    return write_case


def killed_and_resumed(write_case, tmp_path, kill_at: int):
    """(full run folder, resumed run folder): write_case(name) writes a case whose output is
    tmp_path / name; "full" runs to the end, "killed" dies after logging step kill_at (exit 137)
    and is resumed with `zosci run --resume`.

    The killed run gets a process group of its own, killed with it afterwards: worker processes of
    a pool outlive an abrupt exit of their parent, as they would after a real kill."""
    assert main(["run", str(write_case("full"))]) == 0
    (full,) = (tmp_path / "full").iterdir()
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "zosci", "run", str(write_case("killed"))], cwd=ROOT,
                                env={**os.environ, KILL_ENV: str(kill_at)}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=900)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert code == 137, log.read_text()[-2000:]
    (killed,) = (tmp_path / "killed").iterdir()
    assert main(["run", "--resume", str(killed)]) == 0
    return full, killed
