"""Deployment: export adapters to GGUF, register model versions, route deployments."""
