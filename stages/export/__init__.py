"""Export: a finished run becomes a training-ready synthetic 3D dataset (`sctd3d export`).

Modules, one concept each: `select` (the --where filter on manifest columns, via duckdb),
`views` (multi-view RGBA/depth renders and the nerfstudio/Blender `transforms.json`), `formats`
(the registry of splat formats: .ply, SPZ, SOG, .splat, the offline HTML viewer, one module each;
plugins add more), `splat_transform` (the PlayCanvas converter several formats use), `asset` (one asset's
folder, the unit the executors fan out), `index` (the Parquet index), `shards` (WebDataset tars)
and `card` (the Hugging Face dataset card with its plot and sample grid). Orchestration (reading
the run, executors, resuming) lives in pipeline/export.py.
"""
