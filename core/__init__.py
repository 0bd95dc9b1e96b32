"""hemascan core: headless domain code (scan, images, database, model packages, inference).

Never imports Qt; the import-linter contract in pyproject.toml enforces it. The version:
core.distribution.hemascan_version().
"""
