"""Transport-free work: validate, call the model adapters, shape results. No gRPC, no protobuf."""
