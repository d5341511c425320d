"""Calibration sets and INT8 quantization with an accuracy gate."""
