"""Shared ground of stages/ and pipeline/: typed config, storage with atomic writes, the
manifest schema and reader, the per-asset deadline. Imports nothing else of the project."""
