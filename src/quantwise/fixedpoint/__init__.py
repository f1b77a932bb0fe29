"""Fixed-point, integer-only inference: capture, plan, integer executor, simulation, C export."""
