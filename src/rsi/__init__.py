"""rsi: a recursive self-improvement engine for code.

A task's script may call `rsi.progress(step, value)` to report intermediate values, for early stopping.
"""

from rsi.pruning import progress

__version__ = "0.1.0"
__all__ = ["progress"]
