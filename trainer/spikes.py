"""Spike score, the OLMo 2 report's stability metric.

spike score = percentage of the values in a series (training loss, gradient L2 norm) that
lie at least `n_std` (7) standard deviations away from the rolling mean of the previous
`window` (1000) values, on either side.

A value is only judged once `min_history` previous values exist (default: a full window,
as OLMo-core's stability monitor does): with a handful of values the standard deviation is
meaningless and early training would look like nothing but spikes. The score is the
percentage of *judged* values. Standard deviations are population (ddof=0). After a
constant history (std 0) a value equal to it is not a spike and any other value is (it is
infinitely many standard deviations away).

A non-finite value (an inf gradient norm, a NaN loss) leaves the mean of every window that
holds it undefined, so the values judged against such a window are not spikes (OLMo-core's
stability monitor compares with a NaN threshold there, which is never exceeded); an inf
judged against a finite window is one. It is kept out of the running sums, so that it
affects exactly the `window` values after it, in a whole series as in the streaming
tracker (it used to poison every later sum: one inf made a series' score 0).
"""

from __future__ import annotations

from collections import deque

import numpy as np


def spike_flags(values, window: int = 1000, n_std: float = 7.0,
                min_history: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(spike, judged) boolean arrays, one entry per value."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {x.shape}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    min_history = window if min_history is None else min_history
    if not 1 <= min_history <= window:
        raise ValueError(f"min_history must be in [1, window], got {min_history}")
    spikes = np.zeros(len(x), dtype=np.bool_)
    judged = np.zeros(len(x), dtype=np.bool_)
    if len(x) <= min_history:
        return spikes, judged
    # Rolling moments of the previous `window` values from cumulative sums; values are
    # shifted by the first finite one so the sums stay small and the variance well
    # conditioned. Non-finite values enter the sums as 0 and are counted apart.
    finite = np.isfinite(x)
    shift = x[np.argmax(finite)] if finite.any() else 0.0
    y = np.where(finite, x - shift, 0.0)
    c1 = np.concatenate([[0.0], np.cumsum(y)])
    c2 = np.concatenate([[0.0], np.cumsum(y * y)])
    n_bad = np.concatenate([[0], np.cumsum(~finite)])
    idx = np.arange(min_history, len(x))
    lo = np.maximum(0, idx - window)
    count = idx - lo
    mean = (c1[idx] - c1[lo]) / count
    std = np.sqrt(np.maximum((c2[idx] - c2[lo]) / count - mean**2, 0.0))
    with np.errstate(invalid="ignore"):  # a NaN value: never a spike
        dist = np.abs((x[idx] - shift) - mean)
        tol = 1e-12 * np.maximum(1.0, np.abs(np.where(finite[idx], x[idx], 0.0)))  # round-off, not a deviation
        spikes[idx] = (n_bad[idx] == n_bad[lo]) & (dist > tol) & (dist >= n_std * std)
    judged[idx] = True
    return spikes, judged


def spike_score(values, window: int = 1000, n_std: float = 7.0, min_history: int | None = None) -> float:
    """Percentage (0-100) of judged values that are spikes; 0.0 when none could be judged."""
    spikes, judged = spike_flags(values, window, n_std, min_history)
    n = int(judged.sum())
    return 100.0 * int(spikes.sum()) / n if n else 0.0


class SpikeTracker:
    """Streaming spike score for one metric, fed in chunks as metrics reach the host."""

    def __init__(self, window: int = 1000, n_std: float = 7.0, min_history: int | None = None):
        self.window, self.n_std = window, n_std
        self.min_history = window if min_history is None else min_history
        self.history: deque[float] = deque(maxlen=window)
        self.judged = 0
        self.spikes = 0

    def update(self, values) -> int:
        """Add values in order; returns how many of them were spikes."""
        new = np.asarray(values, dtype=np.float64).reshape(-1)
        if not len(new):
            return 0
        series = np.concatenate([np.asarray(self.history, dtype=np.float64), new])
        spikes, judged = spike_flags(series, self.window, self.n_std, self.min_history)
        # Values already in the history were judged when they arrived (the history never
        # holds more than `window` values, so the new ones see exactly their window).
        offset = len(self.history)
        n = int(spikes[offset:].sum())
        self.spikes += n
        self.judged += int(judged[offset:].sum())
        self.history.extend(new.tolist())
        return n

    @property
    def score(self) -> float:
        return 100.0 * self.spikes / self.judged if self.judged else 0.0

    def state_dict(self) -> dict:
        return {"history": list(self.history), "judged": self.judged, "spikes": self.spikes}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque(state["history"], maxlen=self.window)
        self.judged, self.spikes = int(state["judged"]), int(state["spikes"])
