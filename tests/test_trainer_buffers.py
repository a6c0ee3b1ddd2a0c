"""trainer.buffers: memory kept between steps is handed out again only when nothing else refers to it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from trainer.buffers import DEFAULT_POOL, BufferPool
from trainer.loss import fused_lm_loss
from trainer.model import Embedding

SHAPE = (1000, 64)


def test_memory_is_reused_only_once_no_tensor_refers_to_it():
    pool = BufferPool()
    a = pool.empty(SHAPE, torch.float32)
    first = a.data_ptr()
    del a
    b = pool.empty(SHAPE, torch.float32)
    assert b.data_ptr() == first and pool.reused == 1
    assert b.shape == SHAPE and b.dtype == torch.float32 and b.is_contiguous()
    c = pool.empty(SHAPE, torch.float32)  # b is alive: new memory
    assert c.data_ptr() != first
    row = b[3]  # a view keeps b's memory in use after b itself is gone
    del b
    d = pool.empty(SHAPE, torch.float32)
    assert d.data_ptr() not in (first, c.data_ptr())
    del row
    e = pool.empty(SHAPE, torch.float32)
    assert e.data_ptr() == first and pool.reused == 2


def test_dtype_and_shape_are_part_of_the_key_and_the_pool_is_bounded():
    pool = BufferPool(max_per_shape=2, max_shapes=2)
    held = [pool.empty(SHAPE, torch.float32) for _ in range(3)]  # the third is not kept
    assert pool.kept_bytes() == 2 * 1000 * 64 * 4
    del held
    assert pool.empty(SHAPE, torch.float64).dtype == torch.float64 and pool.reused == 0
    pool.empty((10, 10), torch.float32)  # a third shape: the least recently used one goes
    assert pool.kept_bytes() == 1000 * 64 * 8 + 10 * 10 * 4
    pool.clear()
    assert pool.kept_bytes() == 0


def test_other_devices_get_plain_tensors():
    pool = BufferPool()
    t = pool.empty(SHAPE, torch.float32, "meta")
    assert t.device.type == "meta" and pool.kept_bytes() == 0


def _embedding_pair(vocab=500, d=16):
    torch.manual_seed(0)
    ref, emb = nn.Embedding(vocab, d), Embedding(vocab, d)
    emb.weight.data.copy_(ref.weight.data)
    return ref, emb


def test_embedding_gradient_is_bitwise_torchs_and_reuses_memory():
    ref, emb = _embedding_pair()
    before = DEFAULT_POOL.reused
    for step in range(3):
        ids = torch.randint(0, 20, (3, 700))  # > 1,000 tokens, many repeats: torch's parallel path
        g = torch.randn(3, 700, 16)
        ref.weight.grad = emb.weight.grad = None
        (ref(ids) * g).sum().backward()
        (emb(ids) * g).sum().backward()
        assert torch.equal(emb.weight.grad, ref.weight.grad), step
    assert DEFAULT_POOL.reused >= before + 2


def test_accumulated_and_kept_gradients_are_never_written_over():
    ref, emb = _embedding_pair()
    batches = [(torch.randint(0, 50, (2, 64)), torch.randn(2, 64, 16)) for _ in range(3)]
    for ids, g in batches[:2]:  # gradient accumulation: .grad is alive when the next one is made
        (ref(ids) * g).sum().backward()
        (emb(ids) * g).sum().backward()
    assert torch.equal(emb.weight.grad, ref.weight.grad)
    kept = emb.weight.grad  # e.g. kept for logging; zero_grad(set_to_none=True) drops .grad
    snapshot = kept.clone()
    emb.weight.grad = None
    ids, g = batches[2]
    (emb(ids) * g).sum().backward()
    assert torch.equal(kept, snapshot) and emb.weight.grad.data_ptr() != kept.data_ptr()


def test_embedding_without_grad_or_with_torch_options_is_nn_embedding():
    ref, emb = _embedding_pair()
    ids = torch.randint(0, 500, (2, 8))
    with torch.no_grad():
        assert torch.equal(emb(ids), ref(ids))
    padded = Embedding(500, 16, padding_idx=0)
    padded.weight.data.copy_(ref.weight.data)
    ref_padded = nn.Embedding(500, 16, padding_idx=0)
    ref_padded.weight.data.copy_(ref.weight.data)
    ids[0, 0] = 0
    padded(ids).sum().backward()
    ref_padded(ids).sum().backward()
    assert torch.equal(padded.weight.grad, ref_padded.weight.grad)
    assert padded.weight.grad[0].abs().sum() == 0


@pytest.mark.parametrize("chunk_size", [7, None])
def test_fused_loss_weight_gradient_reuses_memory_and_accumulates_exactly(chunk_size):
    torch.manual_seed(1)
    vocab, d = 300, 12
    weight = nn.Parameter(torch.randn(vocab, d) * 0.1)
    batches = [(torch.randn(40, d), torch.randint(0, vocab, (40,))) for _ in range(3)]

    def grad_of(hidden, labels):
        weight.grad = None
        fused_lm_loss(hidden, weight, labels, chunk_size=chunk_size).loss.backward()
        g = weight.grad
        weight.grad = None
        return g

    alone = [grad_of(*b).clone() for b in batches]
    reused = DEFAULT_POOL.reused
    assert torch.equal(grad_of(*batches[0]), alone[0]) and DEFAULT_POOL.reused > reused
    weight.grad = None
    for hidden, labels in batches[:2]:
        fused_lm_loss(hidden, weight, labels, chunk_size=chunk_size).loss.backward()
    assert torch.equal(weight.grad, alone[0] + alone[1])
    kept, snapshot = weight.grad, weight.grad.clone()
    weight.grad = None
    fused_lm_loss(batches[2][0], weight, batches[2][1], chunk_size=chunk_size).loss.backward()
    assert torch.equal(kept, snapshot) and torch.equal(weight.grad, alone[2])
