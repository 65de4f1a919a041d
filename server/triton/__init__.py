"""Everything that talks to Triton: the one shared client and its generic call path (`calls`),
tensor contracts checked against Triton's model metadata (`tensors`), and one small adapter per
task that names its tensors and shapes its results (`detection`, ...)."""
