"""parcae: scaling-law and stability studies for looped (recurrent-depth) language models."""

__version__ = "0.1.0"
