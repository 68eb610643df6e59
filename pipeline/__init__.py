"""sctd3d pipeline: CLI, configs, inputs, storage, manifest, executors."""
