"""`python -m sparseskull` is the `sparseskull` command."""

from sparseskull.cli import main

raise SystemExit(main())
