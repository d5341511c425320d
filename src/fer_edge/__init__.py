"""fer-edge (package root only): deploy facial-expression recognition models to edge GPUs and CPUs.

The code lives in the top-level folders export/, calibration/, runtime/, benchmarks/ and training/,
which setup.cfg maps to the subpackages fer_edge.export, fer_edge.calibration, ...
"""
__version__ = "0.1.0"
