"""AdamW as OLMo 2 uses it: decoupled weight decay 0.1 on everything but the input embedding.

OLMo 2 decays the RMSNorm gains too (the released OLMo configs say `decay_norm_and_bias:
true`, `decay_embeddings: false`; OLMo-core's OLMo 2 scripts set weight_decay 0 for
`embeddings.weight` only). `decay_norms=False` (`--no-decay-norms`) exempts the norm gains
as well, the common GPT-2 / Llama practice. Two parameter groups are built from the model's
module types (trainer.model.no_decay_param_names), not from name patterns, so a renamed
module cannot silently start decaying its embedding. The fused kernel is used on GPU (one
launch for the whole update) and on CPU, where torch's fused AdamW makes one pass over
parameter, gradient and moments instead of the "foreach" path's dozen (about 10x faster on
this project's 2-core machines); both keep the step free of host syncs. Other devices get
"foreach".
"""

from __future__ import annotations

import torch
import torch.nn as nn

from trainer.config import TrainConfig
from trainer.model import no_decay_param_names


def _strip_wrappers(name: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        name = name.replace(prefix, "")
    return name


def param_groups(model: nn.Module, weight_decay: float, decay_norms: bool = True) -> list[dict]:
    inner = getattr(model, "module", model)
    no_decay = {_strip_wrappers(n) for n in no_decay_param_names(inner, decay_norms=decay_norms)}
    decay, skip = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (skip if _strip_wrappers(name) in no_decay else decay).append(param)
    # No list of names in a group: it was saved in optim.pt, and torch's loader cannot map one whose
    # length changed (a resume with another --decay-norms failed with a KeyError; found by a reviewer).
    return [{"params": decay, "weight_decay": weight_decay}, {"params": skip, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay, decay_norms=cfg.decay_norms)
    fused = next(model.parameters()).device.type in ("cuda", "cpu")
    kwargs = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip to `max_norm` and return the pre-clip total L2 norm as a device tensor (no sync)."""
    params = [p for p in model.parameters() if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
