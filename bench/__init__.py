"""Benchmarks of vision-grpc against direct Triton, in-process onnxruntime and the naive
per-request client, side by side: `python -m bench` (see bench/REPORT.md)."""
