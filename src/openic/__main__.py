"""`python -m openic` is the same as the `openic` console script."""

from openic.cli import main

raise SystemExit(main())
