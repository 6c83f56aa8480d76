"""The zosci command line: run, resume and validate case files."""
from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

from .config import flatten
from .errors import ConfigError


def case_dirs() -> list[Path]:
    """The cases/ folders: the one shipped next to the package, and the current directory's."""
    dirs = []
    for d in (Path(__file__).resolve().parent.parent / "cases", Path.cwd() / "cases"):
        if d.is_dir() and d.resolve() not in [x.resolve() for x in dirs]:
            dirs.append(d)
    return dirs


def shipped_cases() -> list[tuple[str, str]]:
    """(path as shown, description) of every cases/*.toml."""
    out = []
    for d in case_dirs():
        for path in sorted(d.glob("*.toml")):
            try:
                shown = str(path.resolve().relative_to(Path.cwd().resolve()))
            except ValueError:
                shown = str(path)
            try:
                desc = str(tomllib.loads(path.read_text()).get("description", ""))
            except (OSError, tomllib.TOMLDecodeError) as err:
                desc = f"(unreadable: {err})"
            out.append((shown, desc))
    return out


def _epilog() -> str:
    cases = shipped_cases()
    if not cases:
        return "no case files found in cases/"
    width = max(len(p) for p, _ in cases)
    lines = ["cases (zosci run PATH):"] + [f"  {p:<{width}}  {d}" for p, d in cases]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zosci", description="Scientific optimization through black boxes.",
                                epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser("run", help="run a case file, or resume a run folder",
                       description="Run CASE.toml in a new run folder, or continue RUN_DIR from its last checkpoint.")
    r.add_argument("case", nargs="?", metavar="CASE.toml")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
    v = sub.add_parser("validate", help="check a case file without running it")
    v.add_argument("case", metavar="CASE.toml")
    return p


def cmd_run(args) -> int:
    from .cases import get_kind, load_case
    from .runs import Run

    if bool(args.case) == bool(args.resume):
        raise ConfigError("run: give either CASE.toml or --resume RUN_DIR (one of them)")
    if args.resume:
        run = Run.open(args.resume)
        module = get_kind(run.config["kind"])
    else:
        module, config, text = load_case(args.case)
        run = Run.create(config, text, config["output"])
    with run:
        print(f"run folder: {run.path}{' (resumed)' if run.resumed else ''}", flush=True)
        try:
            module.run(run)
        except KeyboardInterrupt:
            print(f"\ninterrupted; continue with: zosci run --resume {run.path}", file=sys.stderr)
            return 130
    print(f"done: {run.path}")
    return 0


def cmd_validate(args) -> int:
    from .cases import load_case

    _, config, _ = load_case(args.case)
    print(f"{args.case}: valid ({config['kind']} case {config['name']!r}); with defaults:")
    for key, value in flatten(config).items():
        print(f"  {key} = {json.dumps(value)}")
    return 0


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    try:
        return {"run": cmd_run, "validate": cmd_validate}[args.command](args)
    except ConfigError as err:
        print(f"zosci: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
