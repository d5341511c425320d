"""The TensorRT backend: engine loading, compatibility checks before deserialisation, CUDA buffers."""
