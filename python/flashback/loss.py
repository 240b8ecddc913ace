"""Losses. Labels follow HF's convention everywhere: aligned with input_ids (labels[t] is the token at t,
IGNORE_INDEX where nothing is scored) and shifted here, so row t of the logits is scored against
labels[t + 1].

causal_lm_loss is HF's (every vocabulary column in the softmax). target_loss is FlashBack's: the marking
tokens leave the softmax (they are never predicted), and only the labelled tokens count (the paper labels
the s target tokens of each example)."""

from typing import Optional

import torch
import torch.nn.functional as F

from . import _C

IGNORE_INDEX = -100


def token_loss(logits: torch.Tensor, targets: torch.Tensor, mark_left: Optional[int] = None,
               reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of rows `logits` [..., V] against the tokens they predict, `targets` [...]
    (already aligned: no shift; IGNORE_INDEX rows are skipped; on any device, moved to the logits'). With
    `mark_left` (<MARK_L>; <MARK_R> follows it, both last in the vocabulary) the mark columns are dropped
    first; a mark as a target is an error."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree")
    targets = targets.to(logits.device)  # as HF's losses: labels made on the host score a model on the GPU
    if mark_left is not None and mark_left >= 0:
        marks = _C.MarkingToken(logits.shape[-1])  # the marks are the vocabulary's last two
        if marks.left != mark_left:
            raise ValueError(f"<MARK_L> is {mark_left} but the last two of {logits.shape[-1]} logits are "
                             f"{marks.left} and {marks.right}")
        if bool((targets >= marks.left).any()):
            raise ValueError("a label is a marking token: marks are never targets")
        logits = marks.strip(logits)  # the C++ rule, differentiable
    v = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, v).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction=reduction)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, mark_left: Optional[int] = None,
                   reduction: str = "mean") -> torch.Tensor:
    """HF's ForCausalLMLoss: logits [B, T, V], labels [B, T] aligned with the input; shifted here."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    return token_loss(logits[..., :-1, :], labels[..., 1:], mark_left, reduction)


def target_loss(logits: torch.Tensor, labels: torch.Tensor, mark_left: Optional[int] = None,
                reduction: str = "mean") -> torch.Tensor:
    """FlashBack's training loss: causal_lm_loss with the marking tokens (from `mark_left`) out of the
    softmax. `model(input_ids, labels=labels, loss="target")` computes the same, applying the head to
    the labelled rows only."""
    return causal_lm_loss(logits, labels, mark_left, reduction)
