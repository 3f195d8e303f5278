"""Symbol agents: the shared-trunk policy with batched per-symbol actor/critic heads."""
