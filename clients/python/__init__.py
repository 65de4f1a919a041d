"""The Python SDK and CLI (package `clients.python.vision_client`)."""
