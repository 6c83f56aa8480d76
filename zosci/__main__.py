"""python -m zosci: the zosci command line."""
from .cli import main

raise SystemExit(main())
