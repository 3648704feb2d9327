"""`python -m pymemcg`: the command line (see pymemcg.cli)."""

from .cli import main

raise SystemExit(main())
