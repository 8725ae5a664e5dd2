"""Frozen: scores pipeline.make_model() on the digits data that scikit-learn ships (no download).

Default: mean 5-fold cross-validated accuracy on the training part, folds shuffled by RSI_SEED (the selection
metric, noisy like any real one). `--split test`: fit on the whole training part, accuracy on the test part
(the held-out metric, never used for selection).
"""

from __future__ import annotations

import argparse
import os

from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", choices=("cv", "test"), default="cv")
    split = ap.parse_args().split
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    from pipeline import make_model  # imported after the data split, which it cannot change

    if split == "test":
        score = make_model().fit(x_train, y_train).score(x_test, y_test)
        print(f"test_accuracy: {score:.6f}")
        return
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=int(os.environ.get("RSI_SEED", "0")))
    scores = cross_val_score(make_model(), x_train, y_train, cv=folds)
    print(f"cv_accuracy: {scores.mean():.6f}")


if __name__ == "__main__":
    main()
