"""``python -m core`` == the ``hemascan`` command."""
import sys

from core.cli import main

sys.exit(main())
