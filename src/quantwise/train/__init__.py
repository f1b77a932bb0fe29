"""Training: the QAT loop and how a task's QAT format is built."""
