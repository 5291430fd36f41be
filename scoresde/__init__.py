"""scoresde: score-based generative modelling with SDEs, on JAX."""

__version__ = "0.1.0"
