"""rsi: a recursive self-improvement engine for code."""

__version__ = "0.1.0"
