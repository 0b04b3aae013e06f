"""Training Performance REST API (read-only over the store)."""
