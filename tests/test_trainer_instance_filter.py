"""OLMo 2's instance filter: an instance holding a 1..13-token n-gram repeated 32+ times in a
row loses all of its labels (OLMo-core's InstanceFilterConfig), checked against a reference
implementation of OLMo-core's rule written here."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data import DataLoader, MemmapDataset
from trainer.loss import IGNORE_INDEX


def olmo_core_keeps(ids, max_period: int = 13, min_period: int = 1, max_count: int = 32) -> bool:
    """OLMo-core's `_validate_instance` + `find_periodic_sequences`, re-derived from its description.

    For each period p in [min_period, min(max_period, len // 3)], the instance (padded with -1
    to whole rows) is read as rows of p tokens; a row "repeats" when it equals the row before
    it. Each group of consecutive repeating rows is one run, widened by the trailing tokens
    of the row before the group that already match p positions back, and by the leading
    tokens of the row after it that still do. A run counts (end - start) // p repetitions and
    is only reported above 2. The instance is kept unless some reported run reaches max_count.
    Written with plain loops, independently of trainer.repetition's detector."""
    ids = [int(x) for x in ids]
    n = len(ids)
    for p in range(min_period, min(max_period, n // 3) + 1):
        padded = ids + [-1] * (p - n % p)
        rows = [padded[i:i + p] for i in range(0, len(padded), p)]

        def equal_to_prev(r: int) -> list[bool]:  # elementwise, row r against row r - 1 (row 0 against the last)
            return [a == b for a, b in zip(rows[r], rows[r - 1])]

        repeating = [r for r in range(len(rows)) if all(equal_to_prev(r))]
        groups, current = [], []
        for r in repeating:
            if current and r != current[-1] + 1:
                groups.append(current)
                current = []
            current.append(r)
        if current:
            groups.append(current)
        for group in groups:
            first, last = group[0], group[-1]
            before = equal_to_prev(first - 1)
            trailing = 0
            while trailing < p and before[p - 1 - trailing]:
                trailing += 1
            after = equal_to_prev(last + 1)
            leading = 0
            while leading < p and after[leading]:
                leading += 1
            start = (first - 1) * p - (trailing if 0 < trailing < p else 0)
            end = (last + 1) * p + leading
            times = (end - start) // p
            if times > 2 and times >= max_count:
                return False
    return True


def test_reference_rule_on_hand_made_cases():
    rng = np.random.default_rng(0)
    noise = list(rng.integers(1000, 9000, 200))
    assert olmo_core_keeps(noise)
    assert not olmo_core_keeps(noise[:50] + [5] * 32 + noise[50:])
    assert olmo_core_keeps(noise[:50] + [5] * 31 + noise[50:])
    assert not olmo_core_keeps(noise[:7] + [1, 2, 3] * 32 + noise[7:])
    assert olmo_core_keeps(noise[:7] + [1, 2, 3] * 31 + [1, 2] + noise[7:])  # 31 copies and a partial one
    assert not olmo_core_keeps(list(range(13)) * 32)                         # period 13, the whole instance
    assert olmo_core_keeps(list(range(14)) * 40)                             # period 14 is not checked


def write_tokens(directory, tokens) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    np.asarray(tokens, dtype="<u4").tofile(directory / "part-00000.npy")


def planted_instances(seed: int, n: int, seq_len: int) -> np.ndarray:
    """n instances of random tokens, most with one periodic run near the 32-copy threshold,
    at random offsets (often touching an instance edge)."""
    rng = np.random.default_rng(seed)
    out = rng.integers(1000, 60_000, (n, seq_len))
    for row in out:
        if rng.random() < 0.15:
            continue
        period = int(rng.integers(1, 16))
        copies = int(rng.choice([2, 3, 30, 31, 32, 33, 40]))
        extra = int(rng.integers(0, period))  # a partial copy after the whole ones
        alphabet = rng.integers(0, 3 if rng.random() < 0.5 else 50_000, period)
        run = np.concatenate([np.tile(alphabet, copies), alphabet[:extra]])[:seq_len]
        where = int(rng.choice([0, seq_len - len(run), int(rng.integers(0, seq_len - len(run) + 1))]))
        row[where:where + len(run)] = run
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_instance_filter_agrees_with_olmo_core_rule(tmp_path, seed):
    seq_len = 512
    instances = planted_instances(seed, 120, seq_len)
    write_tokens(tmp_path, instances.reshape(-1))
    ds = MemmapDataset(tmp_path, seq_len=seq_len)  # instance_filter is the default
    assert ds.repetition == "instance_filter"
    n_filtered = 0
    for i in range(len(ds)):
        inst = ds.instance(i)
        assert inst.input_ids.tolist() == instances[i].tolist()
        expected_drop = not olmo_core_keeps(instances[i])
        assert inst.filtered == expected_drop, (i, instances[i][:40])
        if expected_drop:
            n_filtered += 1
            assert (inst.labels == IGNORE_INDEX).all() and inst.masked_by_repetition == seq_len - 1
        else:
            assert inst.masked_by_repetition == 0 and (inst.labels[:-1] == instances[i][1:]).all()
    assert 20 < n_filtered < 100  # the planted runs exercise both sides of the threshold


def test_filter_looks_at_the_instance_alone_unlike_span_masking(tmp_path):
    """16 copies of a 2-gram before an instance edge and 16 after: OLMo-core's filter sees 16
    in each instance and keeps both; span masking scans across the edge and masks the run."""
    rng = np.random.default_rng(1)
    tokens = rng.integers(1000, 50_000, 512)
    tokens[256 - 32: 256 + 32] = np.tile([3, 4], 32)
    write_tokens(tmp_path, tokens)
    filtered = MemmapDataset(tmp_path, seq_len=256, repetition="instance_filter")
    assert not filtered.instance(0).filtered and not filtered.instance(1).filtered
    spans = MemmapDataset(tmp_path, seq_len=256, repetition="mask_spans")
    assert spans.instance(0).masked_by_repetition > 0 and not spans.instance(0).filtered


def test_label_mask_and_filter_accounting_and_batch_order(tmp_path):
    seq_len = 64
    rng = np.random.default_rng(3)
    tokens = rng.integers(1000, 50_000, 8 * seq_len)
    tokens[2 * seq_len + 5: 2 * seq_len + 5 + 33] = 7   # instance 2 is dropped
    write_tokens(tmp_path, tokens)
    mask = rng.random(len(tokens)) > 0.2
    mask.tofile(tmp_path / "part-00000.label_mask.npy")
    ds = MemmapDataset(tmp_path, seq_len=seq_len)
    two = ds.instance(2)
    assert two.filtered and (two.labels == IGNORE_INDEX).all()
    assert two.masked_by_label_mask + two.masked_by_repetition == seq_len - 1  # each label counted once
    off = MemmapDataset(tmp_path, seq_len=seq_len, repetition="off")
    loader, reference = DataLoader(ds, 4, seed=0, prefetch=False), DataLoader(off, 4, seed=0, prefetch=False)
    for _ in range(2):
        a, b = loader.next_batch(), reference.next_batch()
        assert a.indices.tolist() == b.indices.tolist()  # a filtered instance keeps its slot
        assert (a.input_ids == b.input_ids).all()
    s = loader.stats
    assert s["instances_filtered"] == 1 and s["instances"] == 8
    assert s["labels"] == s["targets"] + s["masked_by_label_mask"] + s["masked_by_repetition"]
    assert reference.stats["instances_filtered"] == 0
