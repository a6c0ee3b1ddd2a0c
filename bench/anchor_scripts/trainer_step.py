"""One implementation's training step, timed in its own process: dolmino, transformers or OLMo-core.

    python trainer_step.py SPEC.json        # prints one JSON object

bench/bench_trainer.py starts this once per (round, implementation), with the interpreter
that has the implementation (dolmino and transformers: the project's venv; OLMo-core: its
bench venv, which shares torch). Every run loads the same initial weights (dolmino's
parameter names, mapped here to the implementation's) and the same batch, then runs
`warmup` untimed and `steps` timed optimizer steps. A step is what each project's own
training loop does per batch, minus data loading and logging:

- dolmino: OLMo2(ids, labels) with the fused output layer + cross-entropy + z-loss,
  trainer.optim's clip and AdamW (as trainer.train.Trainer.train_step does; with "compile"
  on CUDA the fused loss's per-chunk softmax and gradient are compiled too, as --compile does);
- transformers: Olmo2ForCausalLM(input_ids, labels) (plain cross-entropy, no z-loss: the
  model has none), torch's clip_grad_norm_, AdamW(fused=True) (the HF Trainer default,
  "adamw_torch_fused", on torch >= 2.8);
- OLMo-core: Transformer(ids, labels, loss_reduction="sum", z_loss_multiplier,
  loss_div_factor=target count), as its TransformerTrainModule.train_batch calls it, its
  clipping (get_total_norm + clip_grads_with_norm_), and AdamWConfig(fused=True).build()
  (torch's fused AdamW: the fastest optimizer it offers on CPU; OLMo 2's own recipes use
  SkipStepAdamW, which does more work per step).

On a GPU (spec "device": "cuda") the forward runs under bf16 autocast when
"autocast_bf16" is set and each model is compiled as its project compiles it when "compile"
is set (dolmino: each block; transformers: torch.compile(model), as the HF Trainer's
torch_compile=True; OLMo-core: Transformer.apply_compile()); steps are timed between device
synchronisations and the peak allocated device memory is reported.

This file imports only torch and the implementation it runs (dolmino's `trainer` package
only for impl "dolmino"), so the OLMo-core process never loads dolmino code.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path

import torch

_HF_LAYER = {
    "attn.q_proj.weight": "self_attn.q_proj.weight", "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight", "attn.o_proj.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight",
    "attn_norm.weight": "post_attention_layernorm.weight", "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight", "mlp.down_proj.weight": "mlp.down_proj.weight",
    "mlp_norm.weight": "post_feedforward_layernorm.weight",
}
_HF_TOP = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
           "lm_head.weight": "lm_head.weight"}
_OLMO_CORE_LAYER = {
    "attn.q_proj.weight": "attention.w_q.weight", "attn.k_proj.weight": "attention.w_k.weight",
    "attn.v_proj.weight": "attention.w_v.weight", "attn.o_proj.weight": "attention.w_out.weight",
    "attn.q_norm.weight": "attention.q_norm.weight", "attn.k_norm.weight": "attention.k_norm.weight",
    "attn_norm.weight": "attention_norm.weight", "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight", "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp_norm.weight": "feed_forward_norm.weight",
}
_OLMO_CORE_TOP = {"embed.weight": "embeddings.weight", "norm.weight": "lm_head.norm.weight",
                  "lm_head.weight": "lm_head.w_out.weight"}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def rename(state_dict: dict, impl: str) -> dict:
    """dolmino parameter names -> the implementation's (a rename: the layouts are the same)."""
    if impl == "dolmino":
        return dict(state_dict)
    top, layer, prefix = ((_HF_TOP, _HF_LAYER, "model.layers") if impl == "transformers"
                          else (_OLMO_CORE_TOP, _OLMO_CORE_LAYER, "blocks"))
    out = {}
    for name, tensor in state_dict.items():
        if name in top:
            out[top[name]] = tensor
            continue
        match = _BLOCK.match(name)
        if not match or match.group(2) not in layer:
            raise KeyError(f"no {impl} name for {name!r}")
        out[f"{prefix}.{match.group(1)}.{layer[match.group(2)]}"] = tensor
    return out


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def no_decay(names: list[str], impl: str) -> set[str]:
    """The input embedding only: no weight decay there (OLMo 2's rule, which dolmino's trainer.optim
    applies by default and OLMo-core's OLMo 2 scripts set; norm gains are decayed), same for all."""
    embed = {"dolmino": "embed.weight", "transformers": "model.embed_tokens.weight",
             "olmo-core": "embeddings.weight"}[impl]
    return {n for n in names if n == embed}


def adamw_groups(model: torch.nn.Module, impl: str, weight_decay: float) -> list[dict]:
    params = dict(model.named_parameters())
    skip = no_decay(list(params), impl)
    return [{"params": [p for n, p in params.items() if n not in skip], "weight_decay": weight_decay},
            {"params": [p for n, p in params.items() if n in skip], "weight_decay": 0.0}]


def build(spec: dict):
    """(model, step_fn, description) for the spec's implementation."""
    impl, m = spec["impl"], spec["model"]
    state = torch.load(spec["weights"], map_location="cpu", mmap=True, weights_only=True)
    state = rename(state, impl)
    device = torch.device(spec.get("device", "cpu"))
    compile_ = bool(spec.get("compile", False))
    ids = torch.load(spec["batch"], weights_only=True).to(device)
    inputs, labels = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    n_targets = float((labels != -100).sum())
    mb = spec["micro_batch_size"]
    micro = [(inputs[i:i + mb], labels[i:i + mb]) for i in range(0, inputs.shape[0], mb)]
    w, lr, wd, max_norm = spec["z_loss_weight"], spec["lr"], spec["weight_decay"], spec["max_grad_norm"]
    betas = tuple(spec["betas"])
    info: dict = {}

    if impl == "dolmino":
        sys.path.insert(0, spec["repo"])
        from trainer.config import ModelConfig, TrainConfig
        from trainer.model import OLMo2
        from trainer.optim import build_optimizer, clip_grad_norm

        cfg = ModelConfig(d_model=m["d_model"], n_layers=m["n_layers"], n_heads=m["n_heads"],
                          mlp_hidden=m["mlp_hidden"], vocab_size=m["vocab_size"], rope_theta=m["rope_theta"],
                          norm_eps=m["norm_eps"], max_seq_len=m["max_seq_len"])
        model = OLMo2(cfg)
        model.load_state_dict(state, strict=True)
        model.to(device)
        if compile_:
            for block in model.blocks:  # as trainer.train does with --compile
                block.compile()
        opt = build_optimizer(model, TrainConfig(lr=lr, weight_decay=wd, betas=betas,
                                                 seq_len=inputs.shape[1], global_batch_size=inputs.shape[0],
                                                 micro_batch_size=mb))
        fused = spec.get("fused_loss", True)
        compile_loss = bool(spec.get("compile_loss", compile_))  # the trainer's --compile does both

        def forward_backward(x, y):
            out = model(x, y, z_loss_weight=w, denominator=n_targets, fused_loss=fused,
                        loss_chunk_size=spec.get("loss_chunk_size"), compile_loss=compile_loss)
            out.loss.backward()
            return out.ce.detach(), out.z_loss.detach()

        def clip():
            clip_grad_norm(model, max_norm)

        loss = "fused output layer + CE + z-loss" if fused else "lm_head + CE + z-loss (lm_loss)"
        if fused and compile_loss and device.type == "cuda":
            loss += " (compiled chunk kernel)"
        info.update(loss=loss, z_loss=True, optimizer="torch AdamW fused=True (trainer.optim)",
                    clipping="clip_grad_norm_ foreach=True", version="worktree")
    elif impl == "transformers":
        import transformers
        from transformers import Olmo2Config, Olmo2ForCausalLM

        config = Olmo2Config(vocab_size=m["vocab_size"], hidden_size=m["d_model"], intermediate_size=m["mlp_hidden"],
                             num_hidden_layers=m["n_layers"], num_attention_heads=m["n_heads"],
                             num_key_value_heads=m["n_heads"], max_position_embeddings=m["max_seq_len"],
                             rope_theta=m["rope_theta"], rms_norm_eps=m["norm_eps"], attention_bias=False,
                             tie_word_embeddings=False, pad_token_id=None, bos_token_id=None, eos_token_id=None)
        model = Olmo2ForCausalLM(config)
        model.load_state_dict(state, strict=True)
        model.to(device)
        model.train()
        opt = torch.optim.AdamW(adamw_groups(model, impl, wd), lr=lr, betas=betas, eps=1e-8, fused=True)
        if compile_:
            model = torch.compile(model)  # HF Trainer with torch_compile=True

        n_items = torch.tensor(n_targets, device=device)

        def forward_backward(x, y):
            # labels are already shifted: shift_labels skips HF's own shift, so all three
            # implementations score exactly the same B x T targets
            out = model(input_ids=x, labels=y, shift_labels=y, num_items_in_batch=n_items)
            out.loss.backward()
            return out.loss.detach(), None

        def clip():
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)

        info.update(loss="lm_head + F.cross_entropy (no z-loss)", z_loss=False,
                    optimizer="torch AdamW fused=True (HF Trainer default adamw_torch_fused)",
                    clipping="clip_grad_norm_ (default foreach)", version=transformers.__version__,
                    attn_implementation=getattr(model.config, "_attn_implementation", None))
    elif impl == "olmo-core":
        import importlib.metadata

        from olmo_core.nn.feed_forward import FeedForwardConfig
        from olmo_core.nn.transformer import TransformerBlockType, TransformerConfig
        from olmo_core.optim import AdamWConfig, OptimGroupOverride

        cfg = TransformerConfig.llama_like(
            d_model=m["d_model"], vocab_size=m["vocab_size"], n_layers=m["n_layers"], n_heads=m["n_heads"],
            qk_norm=True, block_name=TransformerBlockType.reordered_norm, rope_theta=int(m["rope_theta"]),
            layer_norm_eps=m["norm_eps"], feed_forward=FeedForwardConfig(hidden_size=m["mlp_hidden"], bias=False))
        model = cfg.build(init_device="cpu")
        model.load_state_dict(state, strict=True)
        model.to(device)
        model.train()
        if compile_:
            model.apply_compile()  # what its train module does with compile_model=True
        names = [n for n, _ in model.named_parameters()]
        skip = sorted(no_decay(names, impl))
        opt = AdamWConfig(lr=lr, betas=betas, eps=1e-8, weight_decay=wd, fused=True,
                          group_overrides=[OptimGroupOverride(params=skip, opts=dict(weight_decay=0.0))]).build(model)
        div = torch.tensor(n_targets, device=device)

        def forward_backward(x, y):
            out = model(x, labels=y, ignore_index=-100, loss_reduction="sum", z_loss_multiplier=w,
                        loss_div_factor=div, return_logits=False)
            out.loss.backward()
            return out.ce_loss.detach(), out.z_loss.detach()

        def clip():  # TransformerTrainModule._clip_grad_norm without FSDP/DTensor
            params = list(model.parameters())
            grads = [p.grad for p in params if p.grad is not None]
            total = torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False, foreach=None)
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach=None)

        info.update(loss="lm_head + cross_entropy_loss with z-loss (LMLossImplementation.default)", z_loss=True,
                    optimizer="torch AdamW fused=True (olmo_core.optim.AdamWConfig)",
                    clipping="get_total_norm + clip_grads_with_norm_ (TransformerTrainModule)",
                    version=importlib.metadata.version("ai2-olmo-core"))
    else:
        raise ValueError(f"unknown impl {impl!r}")
    del state
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if spec.get("autocast_bf16")
                else contextlib.nullcontext())
    info["compile"] = compile_

    def step():
        ce_sum, z_sum = 0.0, 0.0
        for x, y in micro:
            with autocast:
                ce, z = forward_backward(x, y)
            ce_sum = ce_sum + ce
            z_sum = z_sum + (z if z is not None else 0.0)
        clip()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return ce_sum, z_sum

    return step, info


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    step, info = build(spec)
    device = torch.device(spec.get("device", "cpu"))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    rss_built = _status_kib("VmRSS")
    # The process's peak is the largest VmHWM seen: the one before the first reset covers
    # start-up and build, and each step's covers that step.
    peaks = [_status_kib("VmHWM")]
    first_ce = first_z = None
    times, step_peaks = [], []
    can_reset = _reset_peak()
    for i in range(spec["warmup"] + spec["steps"]):
        before = _status_kib("VmRSS")
        if can_reset:
            _reset_peak()
        sync()
        t0 = time.perf_counter()
        ce, z = step()
        sync()
        elapsed = time.perf_counter() - t0
        peak = _status_kib("VmHWM")
        peaks.append(peak)
        if i == 0:
            first_ce, first_z = float(ce), float(z)
        if i >= spec["warmup"]:
            times.append(elapsed)
        if can_reset and peak is not None and before is not None:
            step_peaks.append((peak - before) / 1024)
    import resource

    known = [p for p in peaks if p is not None]
    out = {
        "impl": spec["impl"], **info,
        "step_seconds": times,
        "first_step_ce": first_ce, "first_step_z_loss": first_z,
        # whole-process high-water mark: weights, grads, optimizer state, activations, the
        # interpreter and the libraries it imported. Not ru_maxrss: Linux carries the parent's
        # high-water mark across fork + exec into it, so it reported the bench process's size
        # whenever that was larger than this step's (dolmino's 30M step: 3,060 MiB against its
        # own 1,733).
        "peak_rss_mib": (max(known) if known else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024,
        "rss_after_build_mib": None if rss_built is None else rss_built / 1024,
        # the most any step raised resident memory above what it started with
        "step_peak_increase_mib": max(step_peaks) if step_peaks else None,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        out["peak_cuda_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
