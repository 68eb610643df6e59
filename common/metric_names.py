"""The per-asset metric names: the one list (the manifest's metric columns, config validation,
stages.metrics, the record, the report, the export index). Its own module, free of pyarrow, so the
config loads on a generation-only install (the GPU check carries no pyarrow)."""

METRIC_COLUMNS = ("clip_l", "image_reward", "toy_psnr", "toy_rprec")
