"""``python -m ldm_mini`` runs the ``ldm-mini`` command."""

from ldm_mini.cli import main

raise SystemExit(main())
