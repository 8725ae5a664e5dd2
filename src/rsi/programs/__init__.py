"""Research programs shipped with rsi: `default.py` is what `rsi run` uses without `--program`."""
