"""fer-bench: latency and accuracy of fer-edge artifacts."""
