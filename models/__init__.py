"""The model side of the toolchain: the one timm model factory and the one checkpoint format, shared by export,
calibration and training, and the bundled reference weights."""
