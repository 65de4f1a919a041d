"""Generated from protos/vision by scripts/gen-protos; do not edit."""
