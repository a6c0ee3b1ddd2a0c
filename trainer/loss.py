"""Language-model loss: cross-entropy plus OLMo 2's z-loss.

z-loss = weight * (log Z)^2 with Z the softmax denominator; it keeps the output logits from
drifting to large magnitudes, one of the stability fixes in the OLMo 2 report. Everything
stays on the device: the function returns tensors and never calls `.item()`, so a training
step does not wait for the GPU (SPEC.md's "no host-device syncs in the step").
"""

from __future__ import annotations

from typing import NamedTuple

import torch

IGNORE_INDEX = -100


class LossOutput(NamedTuple):
    loss: torch.Tensor      # ce + z_loss: what is backpropagated
    ce: torch.Tensor        # mean cross-entropy over unmasked tokens
    z_loss: torch.Tensor    # weight * mean (log Z)^2 over unmasked tokens
    n_tokens: torch.Tensor  # number of unmasked tokens (int64 tensor)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, z_loss_weight: float = 1e-5,
            denominator: torch.Tensor | float | None = None) -> LossOutput:
    """Token-mean cross-entropy + z-loss over labels != -100.

    logits: (..., vocab), any float dtype (upcast to fp32 here); labels: (...) int64.
    `denominator` overrides the token count the sums are divided by: with gradient
    accumulation the caller passes the token count of the whole step so that every
    micro-batch's loss adds up to the exact step mean. With no unmasked token the loss is 0.
    """
    logits = logits.reshape(-1, logits.shape[-1]).float()
    labels = labels.reshape(-1)
    mask = labels != IGNORE_INDEX
    n_tokens = mask.sum()
    # One log-sum-exp serves both terms: ce = log Z - logit[label]. F.cross_entropy would
    # run its own log-softmax over the (tokens x vocab) logits and keep that copy for backward.
    log_z = torch.logsumexp(logits, dim=-1)
    target = logits.gather(1, torch.where(mask, labels, 0).unsqueeze(1)).squeeze(1)
    ce_sum = ((log_z - target) * mask).sum()
    z_sum = (log_z.square() * mask).sum()
    denom = n_tokens.clamp_min(1) if denominator is None else denominator
    ce = ce_sum / denom
    z = z_loss_weight * z_sum / denom
    return LossOutput(ce + z, ce, z, n_tokens)
