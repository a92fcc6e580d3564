"""Evaluation metrics for generated animations (src.eval.metrics)."""
