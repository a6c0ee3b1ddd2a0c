"""Cross-entropy + z-loss against the formula, masking, and the no-sync contract."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.loss import IGNORE_INDEX, lm_loss


def manual(logits: torch.Tensor, labels: torch.Tensor, weight: float) -> tuple[float, float]:
    ce_terms, z_terms = [], []
    for row, label in zip(logits.reshape(-1, logits.shape[-1]).double(), labels.reshape(-1)):
        if label == IGNORE_INDEX:
            continue
        log_z = math.log(sum(math.exp(v) for v in row.tolist()))
        ce_terms.append(log_z - row[label].item())
        z_terms.append(log_z**2)
    n = len(ce_terms)
    return sum(ce_terms) / n, weight * sum(z_terms) / n


def test_matches_manual_formula_with_masking():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11) * 4 + 3  # offset so log Z is far from 0 and z-loss matters
    labels = torch.randint(0, 11, (2, 5))
    labels[0, 1] = labels[1, 4] = IGNORE_INDEX
    out = lm_loss(logits, labels, z_loss_weight=1e-2)
    ce, z = manual(logits, labels, 1e-2)
    assert out.ce.item() == pytest.approx(ce, rel=1e-5)
    assert out.z_loss.item() == pytest.approx(z, rel=1e-5)
    assert out.loss.item() == pytest.approx(ce + z, rel=1e-5)
    assert out.n_tokens.item() == 8
    assert all(isinstance(t, torch.Tensor) for t in out)


def test_gradient_of_z_loss_is_2w_logz_softmax():
    torch.manual_seed(1)
    logits = (torch.randn(1, 3, 7) * 3).requires_grad_()
    labels = torch.full((1, 3), IGNORE_INDEX)
    labels[0, 0] = 2
    out = lm_loss(logits, labels, z_loss_weight=0.5)
    out.z_loss.backward()
    row = logits.detach()[0, 0]
    log_z = torch.logsumexp(row, -1)
    torch.testing.assert_close(logits.grad[0, 0], 2 * 0.5 * log_z * torch.softmax(row, -1))
    assert torch.count_nonzero(logits.grad[0, 1:]) == 0  # masked positions get no gradient


def test_all_masked_gives_zero_not_nan_and_denominator_override():
    logits = torch.randn(4, 9)
    labels = torch.full((4,), IGNORE_INDEX)
    out = lm_loss(logits, labels)
    assert out.loss.item() == 0.0 and out.n_tokens.item() == 0
    labels = torch.tensor([1, 2, IGNORE_INDEX, 3])
    full = lm_loss(logits, labels, z_loss_weight=1e-4)
    halves = [lm_loss(logits[:2], labels[:2], 1e-4, denominator=3.0),
              lm_loss(logits[2:], labels[2:], 1e-4, denominator=3.0)]
    torch.testing.assert_close(halves[0].loss + halves[1].loss, full.loss)


def test_bf16_logits_are_upcast():
    torch.manual_seed(2)
    logits = torch.randn(6, 50)
    labels = torch.randint(0, 50, (6,))
    a = lm_loss(logits, labels).loss
    b = lm_loss(logits.bfloat16(), labels).loss
    assert b.dtype == torch.float32
    assert b.item() == pytest.approx(a.item(), rel=2e-2)


@pytest.mark.gpu
def test_no_host_device_sync_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    logits = torch.randn(4, 128, 1000, device="cuda", requires_grad=True)
    labels = torch.randint(0, 1000, (4, 128), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = lm_loss(logits, labels, 1e-5, denominator=512.0)
        out.loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
