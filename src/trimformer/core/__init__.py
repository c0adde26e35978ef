"""Pure tensor functions of the token-pruning engine: no model imports."""
