"""The paper's training loss: cross-entropy on the target tokens only, with the
marking tokens excluded from the softmax (they are never predicted)."""

from typing import Optional

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def target_loss(logits: torch.Tensor, labels: torch.Tensor, mark_left: Optional[int] = None,
                reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of `logits` [..., V] against `labels` [...] (the token each
    row predicts, IGNORE_INDEX where nothing is scored). With `mark_left` (the
    id of <MARK_L>; <MARK_R> follows it, both last in the vocabulary) the mark
    columns are dropped before the softmax. A label that is a mark id is an error."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    if mark_left is not None and mark_left >= 0:
        if bool((labels >= mark_left).any()):
            raise ValueError("a label is a marking token: marks are never targets")
        logits = logits[..., :mark_left]
    v = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, v).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction=reduction)
