"""The model: a scikit-learn pipeline for the 8x8 digit images that scikit-learn ships. rsi edits this file.

evaluate.py (frozen) scores `make_model()` by cross-validation on the training part; the test part is the
held-out check no proposer sees.
"""

from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

n_components = 6
whiten = False
use_scaler = True
C = 0.05
gamma = 0.01
class_balance = False


def make_model() -> Pipeline:
    steps = []
    if use_scaler:
        steps.append(("scale", StandardScaler()))
    steps.append(("pca", PCA(n_components=n_components, whiten=whiten, random_state=0)))
    steps.append(("svc", SVC(C=C, gamma=gamma, class_weight="balanced" if class_balance else None)))
    return Pipeline(steps)
