"""Configuration dataclasses for the OLMo 2 trainer (model shape and training recipe).

Defaults are the OLMo 2 report's numbers (SPEC.md section 3), so that a config built with
no arguments describes the paper's recipe and every deviation is visible in the code that
builds it.

Preset names follow two conventions, both OLMo's: the small research sizes ("olmo2-30M",
"olmo2-190M", "olmo2-370M") are OLMo-core's `TransformerConfig.olmo2_*` shapes and count
non-embedding parameters the way OLMo-core does (everything but the input embedding; the
untied LM head counts), and the released models ("olmo2-1b", "olmo2-7b", "olmo2-13b") are
named after the release, whose names round the total. `describe_preset` prints both counts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

DOLMA2_VOCAB_SIZE = 100278
DOLMA2_EOS_TOKEN_ID = 100257
DOLMA2_PAD_TOKEN_ID = 100277


def round_up(value: float, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= value."""
    return int(math.ceil(value / multiple) * multiple)


@dataclass
class ModelConfig:
    """Shape of an OLMo 2 decoder. `mlp_hidden` / `padded_vocab_size` are derived when unset.

    The embedding matrix is padded to a multiple of 128 rows (100278 -> 100352) because
    matmuls with a vocabulary dimension that is a multiple of 128 map onto tensor-core
    tiles; the extra rows are never targets, they only cost a little memory.
    """

    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    mlp_hidden: int | None = None
    vocab_size: int = DOLMA2_VOCAB_SIZE
    vocab_multiple: int = 128
    rope_theta: float = 500_000.0
    norm_eps: float = 1e-6
    max_seq_len: int = 4096
    init_std: float = 0.02
    eos_token_id: int = DOLMA2_EOS_TOKEN_ID
    pad_token_id: int = DOLMA2_PAD_TOKEN_ID

    def __post_init__(self):
        for name in ("d_model", "n_layers", "n_heads", "vocab_size", "max_seq_len", "vocab_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.mlp_hidden is None:
            self.mlp_hidden = round_up(8 * self.d_model / 3, 128)
        if self.mlp_hidden < 1:
            raise ValueError(f"mlp_hidden must be positive, got {self.mlp_hidden}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def padded_vocab_size(self) -> int:
        return round_up(self.vocab_size, self.vocab_multiple)

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameter count from the shapes alone (the 7B preset is never instantiated to count it).

        `include_embedding=False` drops the input embedding only; the untied lm head is a
        real matmul and stays counted, as in FLOP accounting.
        """
        d, h, v = self.d_model, self.mlp_hidden, self.padded_vocab_size
        per_layer = 4 * d * d + 3 * d * h + 4 * d  # q,k,v,o; gate,up,down; q_norm,k_norm,2 output norms
        body = self.n_layers * per_layer + d  # final norm
        lm_head = v * d
        embedding = v * d
        return body + lm_head + (embedding if include_embedding else 0)

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token: 6 x matmul params + 12 x layers x d_model x seq_len for the attention
        scores and their use, PaLM appendix B's count, which does not halve for the causal mask."""
        return 6 * self.num_params(include_embedding=False) + 12 * self.n_layers * self.d_model * seq_len

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {unknown}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        shape = MODEL_PRESETS.get(name) or LEGACY_PRESETS.get(name)
        if shape is None:
            raise ValueError(f"unknown model preset {name!r}; choose one of {list(MODEL_PRESETS)}")
        return cls(**{**shape, **overrides})

    def same_shape(self, other: "ModelConfig") -> list[str]:
        """Fields whose difference makes weights of one config meaningless in the other
        (shapes, RoPE base, norm epsilon); empty when they are interchangeable. The real
        vocabulary size may differ as long as the padded embedding has the same rows."""
        fields = ("d_model", "n_layers", "n_heads", "mlp_hidden", "padded_vocab_size", "rope_theta", "norm_eps")
        return [f"{f} {getattr(self, f)} != {getattr(other, f)}" for f in fields
                if getattr(self, f) != getattr(other, f)]

    def preset_name(self) -> str | None:
        """The preset with this shape, if any (used to name an imported checkpoint)."""
        for name in MODEL_PRESETS:
            if not self.same_shape(ModelConfig.preset(name)):
                return name
        return None


# Shapes. "tiny" exists for tests and smoke runs; the rest are OLMo-core's / the releases'.
MODEL_PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, max_seq_len=512),
    "olmo2-30M": dict(d_model=256, n_layers=4, n_heads=8, max_seq_len=4096),
    "olmo2-190M": dict(d_model=768, n_layers=12, n_heads=12, mlp_hidden=3072, max_seq_len=4096),
    "olmo2-370M": dict(d_model=1024, n_layers=16, n_heads=16, mlp_hidden=4096, max_seq_len=4096),
    "olmo2-1b": dict(d_model=2048, n_layers=16, n_heads=16, mlp_hidden=8192, max_seq_len=4096),
    "olmo2-7b": dict(d_model=4096, n_layers=32, n_heads=32, mlp_hidden=11008, max_seq_len=4096),
    "olmo2-13b": dict(d_model=5120, n_layers=40, n_heads=40, mlp_hidden=13824, max_seq_len=4096),
}

# Names of earlier versions, kept so that old scripts still run. "20M" / "150M" counted the
# transformer blocks only (the 20M preset is 71M non-embedding, 122M in all), which surprised
# users; they are not listed in --help and `preset` says what they are.
LEGACY_PRESETS: dict[str, dict] = {
    "20M": dict(d_model=512, n_layers=6, n_heads=8, max_seq_len=4096),
    "150M": dict(d_model=1024, n_layers=12, n_heads=16, max_seq_len=4096),
    "1B": MODEL_PRESETS["olmo2-1b"],
}


def format_params(n: int) -> str:
    """7298617344 -> '7.30B', 29102336 -> '29.1M'."""
    for suffix, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:#.3g}{suffix}" if n < 100 * scale else f"{n / scale:.0f}{suffix}"
    return str(n)


def describe_params(cfg: "ModelConfig") -> str:
    """'29.1M non-embedding / 54.8M total parameters' (the counts --help and the startup line print)."""
    return (f"{format_params(cfg.num_params(include_embedding=False))} non-embedding / "
            f"{format_params(cfg.num_params())} total parameters")


def describe_preset(name: str) -> str:
    cfg = ModelConfig.preset(name)
    return f"{name}: {cfg.n_layers} x {cfg.d_model}, {describe_params(cfg)}"


SCHEDULES = ("cosine", "linear_to_zero")

# What the data loader does with repeated n-gram runs (trainer.data):
# "instance_filter" (OLMo 2, OLMo-core's InstanceFilterConfig) ignores every label of an
# instance holding a run; "mask_spans" ignores only the labels inside the run; "off".
REPETITION_MODES = ("instance_filter", "mask_spans", "off")

# The paper's recipes (SPEC.md section 3), as defaults for `python -m trainer.run --recipe NAME`;
# any flag given explicitly still wins. Pretraining: warm-up 2000 steps, cosine to 10% of
# peak over 5T tokens (7B stopped at 4T: `stop_tokens`, the length trainer.schedule shows
# without data; a run's length comes from its data or --steps). Mid-training: the
# same model and batch from a pretrained checkpoint (--init-from), no warm-up, learning rate
# from where pretraining left it linearly to exactly 0 over one pass of the mix. All of them
# decay norm gains (only embeddings are exempt) and filter whole instances with repeated
# n-grams, as OLMo 2 did.
_OLMO2 = dict(repetition="instance_filter", decay_norms=True)
RECIPES: dict[str, dict] = {
    "olmo2-7b": dict(model="olmo2-7b", seq_len=4096, batch_size=1024, lr=3e-4, warmup_steps=2000,
                     schedule="cosine", final_lr_fraction=0.1, horizon_tokens=5 * 10**12, stop_tokens=4 * 10**12,
                     **_OLMO2),
    "olmo2-13b": dict(model="olmo2-13b", seq_len=4096, batch_size=2048, lr=9e-4, warmup_steps=2000,
                      schedule="cosine", final_lr_fraction=0.1, horizon_tokens=5 * 10**12, **_OLMO2),
    "olmo2-7b-anneal": dict(model="olmo2-7b", seq_len=4096, batch_size=1024, warmup_steps=0,
                            schedule="linear_to_zero", **_OLMO2),
    "olmo2-13b-anneal": dict(model="olmo2-13b", seq_len=4096, batch_size=2048, warmup_steps=0,
                             schedule="linear_to_zero", **_OLMO2),
    # The paper's data probe: a short anneal of a pretrained checkpoint (any size: the shape
    # comes from --init-from) on ~50/50 web and a candidate source
    # (manifests/microanneal-template.json), OLMo 2 7B's batch.
    "microanneal": dict(seq_len=4096, batch_size=1024, warmup_steps=0, schedule="linear_to_zero", **_OLMO2),
}

# Anneal recipes -> the pretraining recipe whose schedule gives their start LR (None: the
# one whose model has the checkpoint's shape).
ANNEAL_RECIPES: dict[str, str | None] = {"olmo2-7b-anneal": "olmo2-7b", "olmo2-13b-anneal": "olmo2-13b",
                                         "microanneal": None}

# Where OLMo 2's stage 1 ended (OLMo's official-1124 stage-2 configs load these checkpoints;
# HF revisions stage1-step928646-tokens3896B of allenai/OLMo-2-1124-7B and step 596,057 of
# the 13B). Used when the checkpoint an anneal starts from does not record its step.
STAGE1_END_STEP: dict[str, int] = {"olmo2-7b": 928_646, "olmo2-13b": 596_057}
# The LR the released mid-training started from at those checkpoints (SPEC.md section 3, from
# OLMo's official-1124 stage-2 configs). For 7B it is not this project's cosine at the step
# (6.1351e-5, as OLMo-core's own 7B anneal script computes it): SPEC's number is the default.
STAGE1_END_LR: dict[str, float] = {"olmo2-7b": 6.1499e-5, "olmo2-13b": 9e-5}

RECIPE_HELP = {
    "olmo2-7b": "OLMo 2 7B pretraining: 1024 x 4096 tokens, 3e-4, 2000 warm-up, cosine to 10%% over 5T",
    "olmo2-13b": "OLMo 2 13B pretraining: 2048 x 4096 tokens, 9e-4, 2000 warm-up, cosine to 10%% over 5T",
    "olmo2-7b-anneal": "OLMo 2 7B mid-training: from the LR pretraining reached at the checkpoint's step "
                       "(6.1499e-5 at the stage-1 end, 928,646) linearly to 0 over one pass of the mix",
    "olmo2-13b-anneal": "OLMo 2 13B mid-training: from the LR pretraining reached at the checkpoint's step "
                        "(9e-5 at the stage-1 end, 596,057) linearly to 0 over one pass of the mix",
    "microanneal": "a short anneal of any --init-from checkpoint (its shape) on a small mix, 1024 x 4096 "
                   "tokens, LR from the matching pretraining cosine",
}


@dataclass
class TrainConfig:
    """The training recipe. Batch sizes are in instances of `seq_len` tokens.

    `global_batch_size` instances make one optimizer step across all ranks; each rank runs
    `global_batch_size / world_size / micro_batch_size` forward/backward passes per step.
    `horizon_tokens` is the length of the LR schedule; `max_steps` may stop earlier (OLMo 2
    7B ran a 5T-token cosine and stopped at 4T). None means "the schedule ends at max_steps".
    """

    seq_len: int = 4096
    global_batch_size: int = 1024
    micro_batch_size: int = 2
    max_steps: int = 1000
    lr: float = 3e-4
    warmup_steps: int = 2000
    schedule: str = "cosine"
    final_lr_fraction: float = 0.1
    horizon_tokens: int | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    z_loss_weight: float = 1e-5
    # The output layer and loss as one chunked autograd function (trainer.loss.fused_lm_loss);
    # False: lm_head, then trainer.loss.lm_loss on the full logits. Same loss either way.
    fused_loss: bool = True
    loss_chunk_size: int | None = None  # tokens per chunk of the fused loss; None: fit 256 MiB (CUDA: 4 GiB)
    seed: int = 1124
    data_seed: int | None = None
    save_interval: int | None = None
    metrics_interval: int = 10
    gc_interval: int = 100
    compile: bool = False
    autocast_bf16: bool = True
    fsdp: bool = False
    repetition: str = "instance_filter"
    decay_norms: bool = True
    repetition_max_n: int = 13
    repetition_min_repeats: int = 32
    spike_window: int = 1000
    spike_n_std: float = 7.0

    def __post_init__(self):
        for name in ("seq_len", "global_batch_size", "micro_batch_size", "max_steps", "metrics_interval",
                     "gc_interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if not 0 <= self.lr < math.inf:  # 0 is allowed: a step that only checks the pipeline changes no weight
            raise ValueError(f"lr must be a finite number >= 0, got {self.lr}")  # inf trained to NaN (a tester)
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        # Clipping scales the gradient by max_grad_norm / norm: a negative bound reverses it (gradient
        # ascent) and 0 erases it. There is no "off" value; inf (or any bound above the norms) never clips.
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm} (to never clip, pass inf)")
        if not 0 <= self.z_loss_weight < math.inf:  # 0 turns the z-loss off; a negative weight rewards large logits
            raise ValueError(f"z_loss_weight must be a finite number >= 0, got {self.z_loss_weight}")
        if self.repetition not in REPETITION_MODES:
            raise ValueError(f"TrainConfig.repetition must be one of {REPETITION_MODES}, got {self.repetition!r}")
        if self.horizon_tokens is not None and self.horizon_tokens < self.tokens_per_step:
            raise ValueError(f"horizon_tokens {self.horizon_tokens} is shorter than one step "
                             f"({self.tokens_per_step} tokens)")
        if self.loss_chunk_size is not None and (not isinstance(self.loss_chunk_size, int)
                                                 or isinstance(self.loss_chunk_size, bool)
                                                 or self.loss_chunk_size < 1):
            raise ValueError(f"loss_chunk_size must be a positive integer (or unset), got {self.loss_chunk_size!r}")
        if self.save_interval is not None and self.save_interval < 1:
            raise ValueError(f"save_interval must be >= 1 (or unset), got {self.save_interval}")
        for name in ("seed", "data_seed"):  # numpy's PCG64 (the data order): >= 0; torch's: < 2**64
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not 0 <= value < 2 ** 64):
                raise ValueError(f"{name} must be an integer from 0 to 2**64 - 1, got {value!r}")
        self.betas = tuple(self.betas)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    @property
    def horizon_steps(self) -> int:
        """Steps over which the schedule decays (ceil of horizon_tokens / tokens per step)."""
        if self.horizon_tokens is None:
            return self.max_steps
        return -(-self.horizon_tokens // self.tokens_per_step)

    def grad_accum_steps(self, world_size: int) -> int:
        per_rank, rem = divmod(self.global_batch_size, world_size)
        if rem:
            raise ValueError(f"global_batch_size {self.global_batch_size} is not divisible by world size {world_size}")
        steps, rem = divmod(per_rank, self.micro_batch_size)
        if rem or steps < 1:
            raise ValueError(f"per-rank batch {per_rank} is not a positive multiple of micro_batch_size "
                             f"{self.micro_batch_size}")
        return steps

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        if "mask_repetitions" in data:  # written before `repetition` / `decay_norms` existed
            data.setdefault("repetition", "mask_spans" if data.pop("mask_repetitions") else "off")
            data.setdefault("decay_norms", False)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {unknown}")
        return cls(**data)


@dataclass
class RunConfig:
    """Everything a checkpoint needs to rebuild a run: model, recipe and data location.

    `init` records where the weights came from when the run started from another checkpoint
    (path, format, the step it was at, how the start LR was chosen), so that a checkpoint
    says which pretraining state an anneal continued and a soup can list its ingredients'.
    `recipe`: the --recipe whose defaults the run took (None: none), so that a resume without it
    can say which to add; its fields alone showed only lr, schedule, ... changing (a reviewer).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data_paths: list[str] = field(default_factory=list)
    init: dict | None = None
    recipe: str | None = None

    def to_dict(self) -> dict:
        data = {"model": self.model.to_dict(), "train": self.train.to_dict(), "data_paths": list(self.data_paths),
                "recipe": self.recipe}
        if self.init is not None:
            data["init"] = dict(self.init)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        return cls(model=ModelConfig.from_dict(data["model"]), train=TrainConfig.from_dict(data["train"]),
                   data_paths=list(data.get("data_paths", [])), init=data.get("init"), recipe=data.get("recipe"))
