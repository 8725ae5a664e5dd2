"""Logistic regression by mini-batch SGD on generated data, in plain Python: a small, noisy training script.

The data come from prepare.py (frozen); this file is what rsi may edit. Its constants are the knobs.
"""

import math
import os
import random

from prepare import load

lr = 2.0
momentum = 0.0
batch_size = 64
weight_decay = 0.01
EPOCHS = 3
USE_BIAS = False

rng = random.Random(int(os.environ.get("RSI_SEED", "0")))
train, val = load()
dim = len(train[0][0])
w = [rng.gauss(0, 0.1) for _ in range(dim)]
b = 0.0
vw = [0.0] * dim
vb = 0.0


def predict(x: list[float]) -> float:
    z = sum(wi * xi for wi, xi in zip(w, x)) + (b if USE_BIAS else 0.0)
    return 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))


for _ in range(EPOCHS):
    rng.shuffle(train)
    for start in range(0, len(train), batch_size):
        batch = train[start : start + batch_size]
        gw, gb = [0.0] * dim, 0.0
        for x, y in batch:
            err = predict(x) - y
            gw = [g + err * xi for g, xi in zip(gw, x)]
            gb += err
        for i in range(dim):
            vw[i] = momentum * vw[i] + gw[i] / len(batch) + weight_decay * w[i]
            w[i] -= lr * vw[i]
        vb = momentum * vb + gb / len(batch)
        b -= lr * vb

loss = -sum(y * math.log(max(predict(x), 1e-12)) + (1 - y) * math.log(max(1 - predict(x), 1e-12)) for x, y in val)
print(f"val_loss: {loss / len(val):.6f}")
