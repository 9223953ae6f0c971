"""slm-operator: run fleets of small language models on fractions of GPUs."""

__version__ = "0.1.0"
