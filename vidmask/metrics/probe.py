"""Linear probes: how much of an attribute a frozen feature holds, as held-out accuracy of a linear classifier.

The temporal question of the three papers (does the video encoder learn
motion, or a bag of appearances?) is measured here the way the field
measures single-frame bias: a multinomial logistic regression trained on the
frozen features of the training clips predicts each object's motion (and, as
controls, its colour and shape); its accuracy on the test clips, beside
chance, says what the feature carries linearly.

The classifier: features standardised with the training statistics, a
softmax layer with L2 penalty ``l2`` on the weights, fitted full-batch with
L-BFGS (deterministic, no learning-rate to tune); classes seen only in the
test split count as errors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def fit_linear_probe(x: Tensor, y: Tensor, num_classes: int, l2: float = 1e-3, iters: int = 200):
    """(weight [K,D], bias [K], mean [D], std [D]) of a logistic regression on features x [n,D], labels y [n]."""
    x = x.double()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-8)  # (D,), (D,)
    z = (x - mean) / std  # (n, D)
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)  # (K, D)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)  # (K,)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach(), mean, std


def probe_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                   l2: float = 1e-3) -> float:
    """Held-out accuracy in % of a linear probe fitted on (train_x [n,D], train_y [n]), on (test_x, test_y)."""
    w, b, mean, std = fit_linear_probe(train_x, train_y, num_classes, l2)
    pred = (((test_x.double() - mean) / std) @ w.T + b).argmax(1)  # (m,)
    return 100.0 * float((pred == test_y).double().mean())
