"""NCNet's weakly-supervised loss (the reference ``train.py``'s ``weak_loss``).

Matching score of a pair, from its filtered correlation ``B x 1 x hA x wA x hB x wB``::

    s_B = max over A cells of softmax over A cells (corr[..., yB, xB])    for every B cell
    s_A = max over B cells of softmax over B cells (corr[yA, xA, ...])    for every A cell
    score = (mean(s_A) + mean(s_B)) / 2

(the reference writes ``mean(s_A + s_B) / 2``, the same number for the square grids it uses).
A confident, unambiguous correlation (one peaked match per cell) scores high.

Loss of a batch of ``n`` matching pairs ``(A_i, B_i)``::

    loss = mean_i score(A_{i+1}, B_i) - mean_i score(A_i, B_i)        (indices mod n)

The negatives pair every target with the *next* pair's source (the reference rolls the batch's
source images by one: ``source_image[np.roll(arange(b), -1)]``), i.e. image A of pair i+1 with
image B of pair i; the set of negative pairs is the same as "A of pair i with B of pair i+1".
With ``n = 1`` the negative is the positive pair itself and the loss is 0 (no gradient), as in
the reference.
"""

from __future__ import annotations

import torch

from .correlation import check_corr4d
from .params import NCNetLoss  # the loss normalisation and its default (train_ncnet.loss), defined once


def matching_score(corr: torch.Tensor, normalization: str = NCNetLoss.normalization) -> torch.Tensor:
    """Per-pair matching score ``B`` (see the module docstring). ``normalization``:
    ``softmax`` (reference), ``l1`` (divide by the sum + 1e-4) or ``none``."""
    check_corr4d(corr)
    b, _, ha, wa, hb, wb = corr.shape
    a_to_b = corr.reshape(b, ha * wa, hb * wb)  # row = A cell, its candidates in B
    b_to_a = a_to_b.transpose(1, 2)  # row = B cell, its candidates in A
    if normalization == "softmax":
        norm = lambda x: torch.softmax(x, dim=2)  # noqa: E731
    elif normalization == "l1":
        norm = lambda x: x / (x.sum(dim=2, keepdim=True) + 1e-4)  # noqa: E731
    elif normalization == "none":
        norm = lambda x: x  # noqa: E731
    else:
        raise ValueError(f"normalization must be softmax, l1 or none, got {normalization!r}")
    s_a = norm(a_to_b).amax(dim=2).mean(dim=1)
    s_b = norm(b_to_a).amax(dim=2).mean(dim=1)
    return (s_a + s_b) / 2


def roll_negatives(feature_a: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """Sources of the negative pairs: ``A_{i+shift}`` for target ``B_i`` (indices mod n)."""
    return torch.roll(feature_a, shifts=-int(shift), dims=0)


def weak_loss_from_scores(score_pos: torch.Tensor, score_neg: torch.Tensor) -> torch.Tensor:
    """``mean(score_neg) - mean(score_pos)``."""
    return score_neg.mean() - score_pos.mean()


def weak_loss(model, feature_a: torch.Tensor, feature_b: torch.Tensor, normalization: str = NCNetLoss.normalization) -> tuple[torch.Tensor, dict]:
    """Weak loss of a batch of matching pairs given their features (``B x C x h x w`` each);
    ``model.forward_features`` gives the filtered correlation. Positives and negatives run as
    one batch. Returns ``(loss, {"score_pos": B, "score_neg": B})``."""
    if feature_a.shape[0] != feature_b.shape[0]:
        raise ValueError(f"feature batch sizes differ: {feature_a.shape[0]} vs {feature_b.shape[0]}")
    n = feature_a.shape[0]
    fa = torch.cat((feature_a, roll_negatives(feature_a)))
    fb = torch.cat((feature_b, feature_b))
    scores = matching_score(model.forward_features(fa, fb), normalization)
    pos, neg = scores[:n], scores[n:]
    return weak_loss_from_scores(pos, neg), {"score_pos": pos.detach(), "score_neg": neg.detach()}
