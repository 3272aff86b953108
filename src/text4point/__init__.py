"""text4point: a runnable, reproducible implementation of Text4Point (Huang et al., 2023)."""

__version__ = "0.1.0"
