"""vision-grpc: an asyncio gRPC service for visual AI inference in front of NVIDIA Triton."""
