"""Face data for the toolchain: dataset readers, label matching and the metrics that score predictions."""
