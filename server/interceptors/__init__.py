"""Cross-cutting concerns around every RPC (no business logic here)."""
