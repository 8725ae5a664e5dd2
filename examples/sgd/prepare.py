"""Frozen: generates the data set (fixed seed), so every candidate sees the same data."""

import random


def load() -> tuple[list[tuple[list[float], int]], list[tuple[list[float], int]]]:
    rng = random.Random(1234)
    true_w = [rng.gauss(0, 1) for _ in range(8)]
    rows = []
    for _ in range(1200):
        x = [rng.gauss(0, 1) for _ in range(8)]
        z = sum(a * b for a, b in zip(true_w, x)) + 1.5 + rng.gauss(0, 0.5)
        rows.append((x, 1 if z > 0 else 0))
    return rows[:800], rows[800:]
