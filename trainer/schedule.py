"""Learning-rate schedules as pure functions of the step (nothing to save but the step).

- "cosine" (pretraining): linear warm-up from 0 to the peak over `warmup_steps`, then a
  cosine from the peak down to `final_lr_fraction` x peak (10% in OLMo 2), reached on step
  `horizon_steps - 1` (the last step of a run as long as its horizon), flat after that. The
  horizon is set in tokens and may be longer than the run: OLMo 2 7B followed a 5T-token
  cosine and stopped ("truncated") at 4T.
- "linear_to_zero" (mid-training / microanneals): optional warm-up, then a straight line
  from the peak down to exactly 0 on step `horizon_steps - 1`. For an anneal the peak is the
  LR pretraining had reached at the checkpoint's step (trainer.plan), and there is no warm-up.

Step numbering: `lr_at(step)` is the LR used by optimizer step `step`, counting from 0, and
is OLMo-core's (and OLMo's) scheduler at its step `step + 1` (they count from 1): warm-up
peak * (step + 1) / warmup_steps, so the first step is not wasted at LR 0 and step
warmup_steps - 1 reaches the peak, which no later step repeats; after it the decay's
progress is (step + 1 - warmup_steps) / (horizon_steps - warmup_steps). (The cosine ran
one step behind, using the peak twice and missing the floor on its last step; found by a
tester comparing with OLMo-core's CosWithWarmup.)

    python -m trainer.schedule --recipe olmo2-7b-anneal --tokens 50B
    python -m trainer.schedule --recipe microanneal --mix manifests/microanneal-template.json --init-from CKPT

prints, as JSON, the number of steps, where the start LR comes from, and the LR at the first
step, the end of warm-up, the quartiles and the last step, without building a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainer.config import SCHEDULES, TrainConfig


@dataclass(frozen=True)
class LRSchedule:
    peak_lr: float
    warmup_steps: int
    horizon_steps: int
    kind: str = "cosine"
    final_lr_fraction: float = 0.1

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; choose one of {SCHEDULES}")
        if not 0 <= self.peak_lr < math.inf:
            raise ValueError(f"lr must be a finite number >= 0, got {self.peak_lr}")
        if self.horizon_steps < 1 or self.warmup_steps < 0:
            raise ValueError(f"horizon_steps must be >= 1 and warmup_steps >= 0, got "
                             f"{self.horizon_steps} and {self.warmup_steps}")
        if self.warmup_steps > self.horizon_steps:
            raise ValueError(f"warmup_steps {self.warmup_steps} is longer than the whole schedule "
                             f"({self.horizon_steps} steps); use fewer warm-up steps (--warmup-steps) or a longer "
                             f"schedule (--steps, --horizon-tokens)")

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "LRSchedule":
        return cls(cfg.lr, cfg.warmup_steps, cfg.horizon_steps, cfg.schedule, cfg.final_lr_fraction)

    def lr_at(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        # Warm-up up to its last step, except a warm-up as long as the horizon: its last step is the
        # horizon's, at the floor (OLMo-core checks the horizon first; found by a reviewer).
        warmup_end = self.warmup_steps if self.warmup_steps < self.horizon_steps else self.warmup_steps - 1
        if step < warmup_end:
            return self.peak_lr * (step + 1) / self.warmup_steps
        decay_steps = self.horizon_steps - self.warmup_steps
        progress = 1.0 if decay_steps <= 0 else min(1.0, (step + 1 - self.warmup_steps) / decay_steps)
        if self.kind == "linear_to_zero":
            return self.peak_lr * (1.0 - progress)
        floor = self.peak_lr * self.final_lr_fraction
        return floor + (self.peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def zero_lr_note(self, start: int, stop: int) -> str | None:
        """Why every step from `start` to `stop` (0-based, `stop` excluded) is at LR 0, with what to do; None
        where one is not. After its warm-up (whose steps are above 0) the LR never rises, so a run is at 0
        throughout exactly when its first step is: --lr 0, or a first step at a floor of 0 (a linear_to_zero
        decay or a cosine with --final-lr-fraction 0, on or past the schedule's last step), as a one-step
        anneal is. trainer.run and trainer.schedule both say it (trainer.schedule printed such a run unsaid)."""
        if start >= stop or self.lr_at(start):
            return None
        said = f"the learning rate is 0 on every step this run takes ({self.kind}, steps {start + 1}-{stop})"
        if not self.peak_lr:
            return f"{said}: its peak (an anneal's start) is 0, so the weights will not change; pass --lr above 0"
        floor = "its decay reaches 0" if self.kind == "linear_to_zero" else "it reaches its floor of 0"
        # more steps past a horizon shorter than the run are at 0 too (--horizon-tokens of one step in five)
        longer = ("a longer --horizon-tokens" if self.horizon_steps < stop
                  else "more --steps, or a longer --horizon-tokens")
        return (f"{said}: the weights will not change; {floor} on step {self.horizon_steps} (counting from 1), the "
                f"end of its horizon: lengthen the schedule ({longer})"
                + ("" if self.kind == "linear_to_zero" else ", or give a --final-lr-fraction above 0"))

    def key_steps(self, max_steps: int) -> dict[str, int]:
        """The steps a reviewer checks: first, end of warm-up, quartiles of the run, last.

        A run that stops inside its warm-up has no "warmup_end": its last step, labelled so,
        showed a fraction of the peak as if it were where the warm-up ends."""
        last = max_steps - 1
        steps = {"first": 0}
        if 0 < self.warmup_steps <= max_steps:
            steps["warmup_end"] = self.warmup_steps - 1
        for q in (25, 50, 75):
            steps[f"{q}%"] = round(last * q / 100)
        steps["last"] = last
        return steps


def main(argv: list[str] | None = None) -> int:
    from trainer.plan import schedule_main

    return schedule_main(argv)


if __name__ == "__main__":
    import sys

    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
