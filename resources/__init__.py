"""Bundled data: default model package, Alembic migrations, icons. Found at run time via
importlib.resources (core.config.resources_dir), from source and from a frozen build."""
