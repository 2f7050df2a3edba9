"""Queries: serve chat completions from GGUF models with llama.cpp."""
