"""``python -m mixpro`` — the same as the ``mixpro`` console script."""

from .cli import main

raise SystemExit(main())
