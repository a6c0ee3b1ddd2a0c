"""Language-model loss: cross-entropy plus OLMo 2's z-loss, plain and fused with the output layer.

z-loss = weight * (log Z)^2 with Z the softmax denominator; it keeps the output logits from
drifting to large magnitudes, one of the stability fixes in the OLMo 2 report. Everything
stays on the device: the functions return tensors and never call `.item()`, so a training
step does not wait for the GPU (SPEC.md's "no host-device syncs in the step").

Two implementations of the same loss:

- `lm_loss(logits, labels)`: from logits the caller has already materialised, through
  autograd. Simple, and the reference the fused path is tested against.
- `fused_lm_loss(hidden, weight, labels)`: the output layer, cross-entropy and z-loss in one
  `torch.autograd.Function` (`FusedLinearCrossEntropy`). The tokens x vocab logits are the
  largest activation of a small model's step (4,096 tokens x 100,352 fp32 logits = 1.6 GB,
  and autograd keeps them and then allocates their gradient, as large again). The fused
  function works through the tokens in chunks, so only one chunk's logits and softmax exist
  at a time, and it writes the gradients of the hidden states and of the output embedding in
  closed form while the chunk's softmax is at hand:

      d loss / d logits = (softmax * (1 + 2 w log Z) - onehot(label)) * mask / denominator

  The backward pass is then only a multiplication by the incoming gradient (1 in training).
  The one-hot is subtracted from the fp32 softmax in place (one element per row) and
  `(1 + 2 w log Z)` is folded into the two (chunk x d) matrices that multiply it, so no
  extra pass runs over the (chunk x vocab) block: per chunk there is one matmul for the
  logits, a row max, one softmax, and the two gradient matmuls.

On a GPU the eager chunk loop is slow for its many passes over each chunk (max, softmax,
gathers, casts), so with `compiled=True` (the trainer's --compile, on by default with CUDA)
each chunk's softmax and gradient run as one torch.compile'd kernel pair between the three
cuBLAS matmuls (`_compiled_chunks`). Measured on one H200 (OLMo2-1B, 8,192 tokens, bf16;
bench/results/gpu): 17.7 ms per micro-batch against 23.6 ms for the eager loop, with a floor
of 14.7 ms for the three matmuls alone, and the same time as the unfused layer under
torch.compile (17.8 ms) in 3.5 GiB instead of 4.2. No hand-written Triton or CUDA kernel:
at 1.21x the matmul floor, one could save at most ~3 ms per micro-batch, ~2% of the step.
"""

from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import torch

from trainer.buffers import DEFAULT_POOL

IGNORE_INDEX = -100

# One chunk's working set: its logits in the compute dtype plus their fp32 softmax. 256 MiB
# keeps a 100,352-word vocabulary at ~330 tokens per chunk in fp32 (~450 under bf16), large
# enough for the matmuls to run at full speed on a CPU, small next to a step's other activations.
DEFAULT_CHUNK_BYTES = 256 * 2**20
# On a GPU every chunk is one launch of each kernel and one pass over the fp32 weight
# gradient, so small chunks leave it waiting: on an H200 (OLMo2-1B, 8,192 tokens, bf16) the
# layer took 47.5 ms at the CPU's 445-token chunk and 23.1 ms at 8,192 in one run
# (bench/results/gpu/run1_loss_layer.json).
DEFAULT_CUDA_CHUNK_BYTES = 4 * 2**30


def _chunk_softmax_grad(logits: torch.Tensor, labels: torch.Tensor, target_scale: torch.Tensor,
                        z_loss_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk's log Z, target logit, and d loss / d logits in the logits' dtype.

    Written for torch.compile (`compiled=True` on CUDA): inductor makes of it one reduction
    over the chunk and one pointwise kernel that writes the gradient, one-hot included, so the
    fp32 softmax is never stored and the two gradient matmuls take it as it is.
    """
    x = logits.float()
    row_max = x.amax(dim=-1, keepdim=True)
    log_z = row_max + (x - row_max).exp().sum(dim=-1, keepdim=True).log()
    target = x.gather(1, labels.unsqueeze(1))
    scale = target_scale.unsqueeze(1)
    coef = (1.0 + 2.0 * z_loss_weight * log_z) * scale
    onehot = torch.arange(x.shape[1], device=x.device).unsqueeze(0) == labels.unsqueeze(1)
    grad = (x - log_z).exp() * coef - onehot * scale
    return log_z.squeeze(1), target.squeeze(1), grad.to(logits.dtype)


@functools.cache
def compiled_chunk_softmax_grad():
    """`_chunk_softmax_grad` under torch.compile, made on first use (the last chunk of a
    micro-batch has its own length: one more compile, with a dynamic row count)."""
    return torch.compile(_chunk_softmax_grad)


class LossOutput(NamedTuple):
    loss: torch.Tensor      # ce + z_loss: what is backpropagated
    ce: torch.Tensor        # mean cross-entropy over unmasked tokens
    z_loss: torch.Tensor    # weight * mean (log Z)^2 over unmasked tokens
    n_tokens: torch.Tensor  # number of unmasked tokens (int64 tensor)


def _target_mask(labels: torch.Tensor, label_mask: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    mask = labels != ignore_index
    if label_mask is not None:
        if label_mask.shape != labels.shape:
            raise ValueError(f"label_mask shape {tuple(label_mask.shape)} != labels shape {tuple(labels.shape)}")
        mask = mask & label_mask.to(torch.bool)
    return mask


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, z_loss_weight: float = 1e-5,
            denominator: torch.Tensor | float | None = None, *, label_mask: torch.Tensor | None = None,
            ignore_index: int = IGNORE_INDEX) -> LossOutput:
    """Token-mean cross-entropy + z-loss over labels != ignore_index (and label_mask True).

    logits: (..., vocab), any float dtype (upcast to fp32 here); labels: (...) int64.
    `denominator` overrides the token count the sums are divided by: with gradient
    accumulation the caller passes the token count of the whole step so that every
    micro-batch's loss adds up to the exact step mean. With no unmasked token the loss is 0.
    """
    logits = logits.reshape(-1, logits.shape[-1]).float()
    labels = labels.reshape(-1)
    mask = _target_mask(labels, None if label_mask is None else label_mask.reshape(-1), ignore_index)
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


def chunk_rows(vocab_size: int, chunk_size: int | None = None, compute_dtype: torch.dtype = torch.float32,
               chunk_bytes: int | None = None, device_type: str = "cpu", compiled: bool = False) -> int:
    """Tokens per chunk: `chunk_size` when given, else as many as fit `chunk_bytes`
    (default: DEFAULT_CUDA_CHUNK_BYTES on CUDA, DEFAULT_CHUNK_BYTES elsewhere).

    A chunk holds its logits in the compute dtype and their softmax in fp32, or, compiled,
    its logits and their gradient in the compute dtype.
    """
    if chunk_size is not None:
        try:  # any integer type (a numpy int64 from a config), not a bool or a float
            rows = None if isinstance(chunk_size, bool) else operator.index(chunk_size)
        except TypeError:
            rows = None
        if rows is None or rows < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return rows
    if chunk_bytes is None:
        chunk_bytes = DEFAULT_CUDA_CHUNK_BYTES if device_type == "cuda" else DEFAULT_CHUNK_BYTES
    size = torch.empty((), dtype=compute_dtype).element_size()
    per_row = vocab_size * (2 * size if compiled else size + 4)
    return max(1, chunk_bytes // per_row)


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The matmul dtype: autocast's when it is on for this device, else the inputs' common dtype."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _add_weight_grad(grad_weight: torch.Tensor, lhs_t: torch.Tensor, rhs: torch.Tensor, first: bool) -> None:
    """grad_weight (fp32) = or += lhs_t @ rhs, with the matmul in its operands' dtype."""
    if lhs_t.dtype == torch.float32:
        if first:
            torch.mm(lhs_t, rhs, out=grad_weight)
        else:
            grad_weight.addmm_(lhs_t, rhs)
    elif first:
        grad_weight.copy_(torch.mm(lhs_t, rhs))
    else:
        grad_weight += torch.mm(lhs_t, rhs).float()


def _eager_chunks(h_all, w, labels, target_scale, z_loss_weight, rows, ce_rows, lse_rows, grad_hidden, grad_weight):
    """The chunk loop in plain torch ops, tuned for CPUs: two buffers reused by every chunk (no
    allocation, and no page faults, per chunk), the softmax written once in fp32, and the
    per-row coefficient folded into the two small (chunk x d) sides of the gradient matmuls."""
    n, vocab = h_all.shape[0], w.shape[0]
    compute_dtype = h_all.dtype
    fp32 = compute_dtype == torch.float32
    logits_buf = torch.empty(rows, vocab, device=h_all.device, dtype=compute_dtype)
    probs_buf = torch.empty(rows, vocab, device=h_all.device, dtype=torch.float32)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        c = stop - start
        h = h_all[start:stop]
        y = labels[start:stop]
        logits = torch.mm(h, w.t(), out=logits_buf[:c])
        row_max, argmax = logits.max(dim=-1)
        target_logit = logits.gather(1, y.unsqueeze(1)).squeeze(1).float()
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32, out=probs_buf[:c])
        # log Z = max - log p[argmax]: p[argmax] >= 1/vocab, so the log is exact to fp32
        # rounding, and there is no second pass over the block as logsumexp would make.
        log_z = row_max.float() - probs.gather(1, argmax.unsqueeze(1)).squeeze(1).log()
        lse_rows[start:stop] = log_z
        ce_rows[start:stop] = log_z - target_logit
        if grad_hidden is None and grad_weight is None:
            continue
        ts = target_scale[start:stop]
        # d loss / d logits = p * coef - onehot * ts, coef = (1 + 2 w log Z) * mask / denominator.
        # The one-hot goes into p itself, in fp32, as p[label] - ts / coef (a write per row,
        # not a pass over the block), so the gradient is coef * p' and coef goes on the small
        # sides of the matmuls. Subtracted after the matmuls instead, a confident label's
        # p - 1 was the difference of two large terms: under bf16 (p rounded to 2^-8 near 1)
        # its gradient was off by tens of percent, or 0 (found by a reviewer). A masked row
        # (coef 0) keeps p: its coef zeroes it. So would 1 + 2 w log Z = 0 an unmasked one's
        # label term: log Z = -1 / (2 w), -50,000 at OLMo 2's weight, far past divergence.
        coef = (1.0 + 2.0 * z_loss_weight * log_z) * ts
        onehot_in_p = torch.where(coef != 0, ts / torch.where(coef != 0, coef, 1.0), 0.0)
        probs.scatter_add_(1, y.unsqueeze(1), -onehot_in_p.unsqueeze(1))
        p = probs if fp32 else logits.copy_(probs)  # the matmuls run in the compute dtype
        if grad_hidden is not None:
            grad_hidden[start:stop] = torch.mm(p, w).float().mul_(coef.unsqueeze(1))  # (p' * coef) @ W
        if grad_weight is not None:
            h_scaled = (h.float() * coef.unsqueeze(1)).to(compute_dtype)  # (p' * coef)^T @ h
            _add_weight_grad(grad_weight, p.t(), h_scaled, start == 0)


def _compiled_chunks(h_all, w, labels, target_scale, z_loss_weight, rows, ce_rows, lse_rows, grad_hidden,
                     grad_weight):
    """The chunk loop for GPUs: cuBLAS for the three matmuls, and between them one compiled
    kernel pair (`_chunk_softmax_grad`) that reads the chunk's logits and writes their
    gradient, instead of eager's max, softmax, gathers and casts, each a pass over the chunk."""
    chunk_grad = compiled_chunk_softmax_grad()
    for start in range(0, h_all.shape[0], rows):
        stop = min(start + rows, h_all.shape[0])
        h = h_all[start:stop]
        log_z, target_logit, g = chunk_grad(torch.mm(h, w.t()), labels[start:stop], target_scale[start:stop],
                                            z_loss_weight)
        lse_rows[start:stop] = log_z
        ce_rows[start:stop] = log_z - target_logit
        if grad_hidden is not None:
            grad_hidden[start:stop] = torch.mm(g, w)
        if grad_weight is not None:
            _add_weight_grad(grad_weight, g.t(), h, start == 0)


class FusedLinearCrossEntropy(torch.autograd.Function):
    """(hidden [N, d], weight [V, d], labels [N]) -> (loss, ce, z_loss, n_tokens), chunked over N.

    Forward computes the loss and, when asked, the gradients of `hidden` and `weight`;
    backward scales them by the incoming gradient of `loss`. `ce`, `z_loss` and `n_tokens`
    are for logging and are not differentiable (backpropagating `ce` alone raises instead of
    returning the gradient of the sum). Backward runs once per forward: the gradients are
    handed to autograd without a copy and are not kept.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                z_loss_weight: float, denominator: torch.Tensor | float | None, chunk_size: int,
                compute_dtype: torch.dtype, need_hidden_grad: bool, need_weight_grad: bool, compiled: bool = False):
        n, d = hidden.shape
        vocab = weight.shape[0]
        device = hidden.device
        n_tokens = mask.sum()
        denom = n_tokens.clamp_min(1) if denominator is None else denominator
        if isinstance(denom, torch.Tensor):
            inv_denom = denom.to(device=device, dtype=torch.float32).reciprocal()
        else:
            inv_denom = 1.0 / float(denom)
        maskf = mask.to(torch.float32)
        # Per-token weight of the one-hot term; rows that are masked out get 0 everywhere.
        target_scale = maskf * inv_denom
        safe_labels = torch.where(mask, labels, 0)

        h_all = hidden.to(compute_dtype)
        w = weight.to(compute_dtype)
        ce_rows = torch.empty(n, device=device, dtype=torch.float32)
        lse_rows = torch.empty(n, device=device, dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden) if need_hidden_grad else None
        # The weight's gradient is written by the first chunk's matmul and accumulated by the
        # others; zero-filling it first would be one more pass over (vocab x d) floats.
        # On CPU its memory is kept from the last step's (trainer.buffers): no page faults.
        grad_weight = DEFAULT_POOL.empty((vocab, d), torch.float32, device) if need_weight_grad else None
        rows = min(chunk_size, max(n, 1))
        if n == 0 and grad_weight is not None:
            grad_weight.zero_()  # no chunk will write it
        chunks = _compiled_chunks if compiled and (need_hidden_grad or need_weight_grad) else _eager_chunks
        chunks(h_all, w, safe_labels, target_scale, float(z_loss_weight), rows, ce_rows, lse_rows, grad_hidden,
               grad_weight)
        ce_sum = (ce_rows * maskf).sum()
        z_sum = (lse_rows.square() * maskf).sum()
        ce = ce_sum * inv_denom
        z = z_loss_weight * z_sum * inv_denom
        loss = ce + z
        if grad_weight is not None and grad_weight.dtype != weight.dtype:
            grad_weight = grad_weight.to(weight.dtype)
        ctx.grads = (grad_hidden, grad_weight)
        ctx.mark_non_differentiable(ce, z, n_tokens)
        return loss, ce, z, n_tokens

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_z, _grad_n):
        if torch.is_grad_enabled():
            # create_graph=True (a gradient penalty, double backward): the gradients were made
            # in forward with no graph, so their own derivative would be silently zero
            # (found by a reviewer); once_differentiable cannot say so where nothing else leads
            raise RuntimeError("fused_lm_loss is differentiable once: create_graph=True (a gradient penalty, "
                               "double backward) needs the plain loss (lm_loss; the trainer's --no-fused-loss)")
        if ctx.grads is None:
            raise RuntimeError("FusedLinearCrossEntropy: backward ran twice for one forward; its gradients "
                               "are computed once in forward and handed over, not kept")
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None  # autograd may take these tensors as .grad without a copy
        if grad_hidden is not None:
            grad_hidden.mul_(grad_loss.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight.mul_(grad_loss.to(grad_weight.dtype))
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None, None


def fused_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, z_loss_weight: float = 1e-5,
                  denominator: torch.Tensor | float | None = None, *, label_mask: torch.Tensor | None = None,
                  ignore_index: int = IGNORE_INDEX, chunk_size: int | None = None,
                  compiled: bool = False) -> LossOutput:
    """`lm_loss(hidden @ weight.T, labels, ...)` without ever holding the full logits.

    hidden: (..., d) final hidden states (after the last norm); weight: (vocab, d) output
    embedding; labels: (...) int64, `ignore_index` = no target; label_mask: optional bool
    (...), False = no target. `denominator` as in `lm_loss` (None: the unmasked token count).
    `chunk_size` is in tokens (None: as many as fit DEFAULT_CHUNK_BYTES, or on CUDA
    DEFAULT_CUDA_CHUNK_BYTES). Under autocast the matmuls run in autocast's dtype and the
    softmax, log Z and the gradient accumulation of the weight in fp32. `compiled` (CUDA only;
    ignored elsewhere) computes each chunk's softmax and gradient in one torch.compile'd
    kernel pair (`_compiled_chunks`); the trainer sets it with --compile. Labels must lie in
    [0, vocab) where unmasked (not checked: a check would sync with the device).
    """
    if hidden.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise ValueError(f"hidden (..., {hidden.shape[-1]}) does not match weight {tuple(weight.shape)}")
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree on the tokens")
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    labels1d = labels.reshape(-1)
    mask = _target_mask(labels1d, None if label_mask is None else label_mask.reshape(-1), ignore_index)
    compute_dtype = _compute_dtype(hidden, weight)
    grad_on = torch.is_grad_enabled()
    need_grads = grad_on and (hidden.requires_grad or weight.requires_grad)
    # without gradients the eager loop runs (its fp32 softmax: 1.5x the compiled loop's bytes
    # per row), and its chunks are sized for it
    compiled = compiled and hidden.device.type == "cuda" and need_grads
    rows = chunk_rows(weight.shape[0], chunk_size, compute_dtype, device_type=hidden.device.type, compiled=compiled)
    with torch.autocast(hidden.device.type, enabled=False):
        loss, ce, z, n_tokens = FusedLinearCrossEntropy.apply(
            hidden2d, weight, labels1d, mask, float(z_loss_weight), denominator, rows, compute_dtype,
            grad_on and hidden.requires_grad, grad_on and weight.requires_grad, compiled)
    return LossOutput(loss, ce, z, n_tokens)
