"""Evaluation and latency: lmms-eval plugin, local tasks, `cope bench`, `cope budget`, retrieval."""
