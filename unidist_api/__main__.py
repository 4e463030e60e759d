"""``python -m unidist_api``: the same as the ``unidist-api`` command."""

from .cli import main

raise SystemExit(main())
