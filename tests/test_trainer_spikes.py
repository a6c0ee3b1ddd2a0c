"""Spike score (values >= 7 std from the rolling mean of the previous 1000) on synthetic series."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.spikes import SpikeTracker, spike_flags, spike_score


def reference_flags(x, window, n_std, min_history):
    spikes = np.zeros(len(x), dtype=bool)
    for i in range(min_history, len(x)):
        prev = np.asarray(x[max(0, i - window): i], dtype=np.float64)
        mean, std = prev.mean(), prev.std()
        d = abs(x[i] - mean)
        spikes[i] = d > 0 and d >= n_std * std
    return spikes


def test_planted_spikes_in_noise_are_found_exactly():
    rng = np.random.default_rng(0)
    loss = 3.0 + 0.01 * rng.standard_normal(4000)
    planted = [1500, 2222, 3999]
    loss[planted] += 0.5  # 50 std
    spikes, judged = spike_flags(loss)
    assert np.flatnonzero(spikes).tolist() == planted
    assert judged.sum() == 3000  # the first 1000 values have no full window
    assert spike_score(loss) == pytest.approx(100 * 3 / 3000)


def test_downward_spikes_count_and_six_std_does_not():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1500)
    x = (x - x[:1000].mean()) / x[:1000].std()  # the first window has mean 0, std 1 exactly
    x[1000] = -7.5
    x[1001] = 0.0
    spikes, _ = spike_flags(x)
    assert spikes[1000]
    y = x.copy()
    y[1000] = 6.0
    assert not spike_flags(y)[0][1000]


def test_matches_reference_loop_on_small_window():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(600) ** 3  # heavy tails: many borderline values
    for window, n_std, min_history in ((10, 2.0, 3), (25, 3.0, 25), (1, 0.5, 1)):
        got, _ = spike_flags(x, window, n_std, min_history)
        assert np.array_equal(got, reference_flags(x, window, n_std, min_history))


def test_constant_history():
    x = [2.0] * 1200
    assert spike_score(x) == 0.0
    x[1100] = 2.0001
    spikes, _ = spike_flags(x)
    assert np.flatnonzero(spikes).tolist() == [1100]


def test_streaming_tracker_equals_batch_whatever_the_chunking():
    rng = np.random.default_rng(3)
    x = 2.0 + 0.05 * rng.standard_normal(2600)
    x[[1200, 1800, 2500]] += 1.0
    expected = spike_score(x)
    for chunk in (1, 7, 10, 999, 2600):
        tracker = SpikeTracker()
        for i in range(0, len(x), chunk):
            tracker.update(x[i: i + chunk])
        assert tracker.score == pytest.approx(expected)
        assert tracker.spikes == 3 and tracker.judged == 1600
    restored = SpikeTracker()
    half = SpikeTracker()
    half.update(x[:1300])
    restored.load_state_dict(half.state_dict())
    restored.update(x[1300:])
    assert restored.spikes == 3 and restored.score == pytest.approx(expected)


def test_short_and_bad_series():
    assert spike_score([]) == 0.0 and spike_score([1.0]) == 0.0
    assert SpikeTracker().score == 0.0
    with pytest.raises(ValueError):
        spike_flags(np.zeros((3, 3)))
    with pytest.raises(ValueError):
        spike_flags([1.0, 2.0], window=0)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_a_non_finite_value_affects_only_the_windows_that_hold_it(bad):
    """One inf gradient norm (or NaN loss) early in a series made every later window's sums
    inf / NaN: the whole series scored 0 offline, while the streaming tracker, whose sums
    restart with each chunk, still found the spikes. Now only the `window` values after it
    lose their judgement (as in OLMo-core's monitor), whatever the chunking."""
    rng = np.random.default_rng(4)
    x = 1.0 + 0.01 * rng.standard_normal(6000)
    x[[2500, 5500]] += 1.0
    x[100] = bad
    x[4000] = bad
    expected = [2500, 4000, 5500] if np.isinf(bad) else [2500, 5500]  # an inf after a finite window is a spike
    spikes, judged = spike_flags(x)
    assert np.flatnonzero(spikes).tolist() == expected
    assert judged.sum() == 5000
    tracker = SpikeTracker()
    for i in range(0, len(x), 10):
        tracker.update(x[i: i + 10])
    assert (tracker.spikes, tracker.judged) == (len(expected), 5000)
    y = 1.0 + 0.01 * rng.standard_normal(3000)
    y[2000], y[2500] = bad, 2.0  # 2500 would be a spike, but its window holds the bad value
    assert np.flatnonzero(spike_flags(y)[0]).tolist() == ([2000] if np.isinf(bad) else [])
