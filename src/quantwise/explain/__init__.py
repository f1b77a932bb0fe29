"""Where accuracy went: per-layer sensitivity, measured causes and what would fix them."""
