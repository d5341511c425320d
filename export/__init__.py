"""Model export: timm EfficientNetV2 checkpoint -> ONNX (FP32/FP16) with contract and parity."""
