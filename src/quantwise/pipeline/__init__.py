"""Orchestration: building a task's format when it needs the task (mixed-precision search)."""
