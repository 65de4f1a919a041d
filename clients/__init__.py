"""Client SDKs for vision-grpc, one folder per language."""
