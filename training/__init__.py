"""Training recipe for the fer-edge reference model (timm tf_efficientnetv2_b0 on FER-2013).

Needs the `train` extra (torch, timm, safetensors, matplotlib). Entry point: `fer-train`
(fer_edge.training.train:main).
"""
