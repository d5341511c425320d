"""The commands: fer-export, fer-bench, fer-demo, fer-train. Each is a thin shell over the library."""
