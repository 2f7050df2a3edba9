"""Lifecycle stages: datasets, fine-tuning, evaluation, deployment and queries."""
