"""hemascan core: headless domain code (scan, images, database, model packages, inference).

Never imports Qt; the import-linter contract in pyproject.toml enforces it.
"""

__version__ = "0.1.0"
