"""python -m zosci.bench NAME [options]: run one benchmark (see zosci.bench.BENCHMARKS)."""
import importlib
import sys

from . import BENCHMARKS


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        print("usage: python -m zosci.bench NAME [options]\n\nbenchmarks:")
        for name, what in BENCHMARKS.items():
            print(f"  {name:<11} {what}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return importlib.import_module(f"zosci.bench.{argv[0]}").main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
