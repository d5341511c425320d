"""Face data for the toolchain: dataset readers, label matching, the metrics that score and compare predictions,
and where the shared datasets live (`paths.shared_data_dir`)."""
