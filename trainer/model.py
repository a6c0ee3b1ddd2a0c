"""The OLMo 2 decoder (SPEC.md section 3), written to match transformers' Olmo2 layout.

What makes it OLMo 2 rather than Llama:
- norms sit on the *outputs* of attention and MLP (h = x + RMSNorm(Attn(x))), not the inputs;
- QK-norm is one RMSNorm over the whole q projection (n_heads * head_dim wide) and one over
  the whole k projection, applied before the reshape to heads and before RoPE;
- no biases anywhere, untied input/output embeddings, every weight trunc-normal(0, 0.02, +-3 std).
RMSNorm runs in float32 and casts back, as HF's Olmo2RMSNorm does, so that bf16 autocast
does not change the statistics and fp32 logits match the HF model to ~1e-6; so does RoPE.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.buffers import DEFAULT_POOL
from trainer.config import ModelConfig
from trainer.loss import LossOutput, fused_lm_loss, lm_loss


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x).to(dtype)


def rope_tables(head_dim: int, max_seq_len: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (max_seq_len, head_dim), "rotate-half" layout (HF / OLMo-core default)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    positions = torch.arange(max_seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (batch, heads, seq, head_dim); cos/sin: (seq, head_dim)."""
    return (x * cos + _rotate_half(x) * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, width = cfg.d_model, cfg.n_heads * cfg.head_dim
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.q_proj = nn.Linear(d, width, bias=False)
        self.k_proj = nn.Linear(d, width, bias=False)
        self.v_proj = nn.Linear(d, width, bias=False)
        self.o_proj = nn.Linear(width, d, bias=False)
        self.q_norm = RMSNorm(width, cfg.norm_eps)
        self.k_norm = RMSNorm(width, cfg.norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x)).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_norm(self.k_proj(x)).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        # Rotated in fp32 and rounded once, as OLMo-core (RoPEConfig.full_precision) and OLMo trained OLMo 2:
        # with the tables cast to bf16 first (autocast, FSDP's bf16 weights), q and k had 1.5x the mean error.
        q, k = apply_rope(q.float(), cos, sin).to(q.dtype), apply_rope(k.float(), cos, sin).to(k.dtype)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Reordered-norm block: h = x + norm(attn(x)); out = h + norm(mlp(h))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.attn_norm(self.attn(x, cos, sin))
        return h + self.mlp_norm(self.mlp(h))


class _EmbeddingPooledGrad(torch.autograd.Function):
    """F.embedding whose weight gradient is written into memory kept from the last step.

    The gradient is the same sum, in the same order, as torch's CPU embedding backward
    (each row adds its tokens' gradients in token order), so it is bitwise the same; only
    where its (vocab x d) block comes from differs (trainer.buffers).
    """

    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.weight_shape, ctx.weight_dtype = weight.shape, weight.dtype
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        if not ctx.needs_input_grad[1]:
            return None, None
        (ids,) = ctx.saved_tensors
        grad = DEFAULT_POOL.empty(ctx.weight_shape, ctx.weight_dtype, grad_out.device).zero_()
        grad.index_add_(0, ids.reshape(-1), grad_out.reshape(-1, grad.shape[1]).to(grad.dtype))
        return None, grad


class Embedding(nn.Embedding):
    """nn.Embedding whose weight gradient reuses the last step's memory on CPU.

    The (vocab x d) gradient is allocated anew every step, and on CPU that memory is faulted
    in page by page (trainer.buffers). On CUDA, under torch.compile, and for the options
    this model never sets (padding_idx, max_norm, sparse, scaled by frequency), it is
    nn.Embedding.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (w.device.type != "cpu" or not (torch.is_grad_enabled() and w.requires_grad)
                or torch.compiler.is_compiling() or self.padding_idx is not None or self.max_norm is not None
                or self.sparse or self.scale_grad_by_freq):
            return super().forward(input)
        return _EmbeddingPooledGrad.apply(input, w)


class OLMo2(nn.Module):
    """Token ids (batch, seq) -> logits (batch, seq, padded_vocab_size), or the loss given labels."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        # Not persistent: derived from the config, so checkpoints and exports carry weights only.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """OLMo 2 init: every weight matrix ~ trunc-normal(0, std), cut at +-3 std; norm gains 1."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)

    @torch.no_grad()
    def reset_rope(self, device=None) -> None:
        """Recompute the RoPE tables (after building on the meta device and materialising)."""
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta,
                               device=device or self.embed.weight.device)
        self.rope_cos, self.rope_sin = cos, sin

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (batch, seq) -> final hidden states (batch, seq, d_model), after the last norm."""
        t = input_ids.shape[1]
        if t > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds max_seq_len {self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, *, z_loss_weight: float = 1e-5,
                denominator: torch.Tensor | float | None = None, fused_loss: bool = True,
                loss_chunk_size: int | None = None, compile_loss: bool = False) -> torch.Tensor | LossOutput:
        """Logits without `labels`; with them, the loss (trainer.loss.LossOutput) and no logits.

        The loss is computed inside forward so that DDP's and FSDP's hooks see the output
        layer's weight used (FSDP gathers it for forward only). `fused_loss` picks
        trainer.loss.fused_lm_loss (chunked output layer + loss, gradients in closed form)
        over lm_head followed by trainer.loss.lm_loss; both compute the same loss.
        `compile_loss` compiles the fused loss's per-chunk softmax and gradient (CUDA only).
        """
        h = self.hidden_states(input_ids)
        if labels is None:
            return self.lm_head(h)
        if fused_loss:
            return fused_lm_loss(h, self.lm_head.weight, labels, z_loss_weight, denominator,
                                 chunk_size=loss_chunk_size, compiled=compile_loss)
        return lm_loss(self.lm_head(h), labels, z_loss_weight, denominator)


def no_decay_param_names(model: nn.Module, decay_norms: bool = True) -> set[str]:
    """Parameters that get no weight decay: the input embedding, and every RMSNorm gain unless
    `decay_norms` (OLMo 2's released configs decay norms: OLMo's `decay_norm_and_bias: true`,
    OLMo-core's OLMo 2 scripts override weight decay for `embeddings.weight` only)."""
    exempt = (nn.Embedding,) if decay_norms else (nn.Embedding, RMSNorm)
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, exempt):
            for param_name, _ in module.named_parameters(recurse=False):
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names
