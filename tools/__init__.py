"""Developer tools: model preparation and a local, real Triton server for tests and runs."""
