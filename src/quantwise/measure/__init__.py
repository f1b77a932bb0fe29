"""Measurement: latency, memory, environment (metrics live with each task)."""
