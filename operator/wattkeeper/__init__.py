"""Wattkeeper: serve LLMs with vLLM on Kubernetes within an energy budget."""

__version__ = "0.1.0"
