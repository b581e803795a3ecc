"""varreason: variational reasoning for language models (arXiv 2509.22637)."""

__version__ = "0.1.0"
