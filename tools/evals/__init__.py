"""Evaluation: score a model on a dataset split."""
