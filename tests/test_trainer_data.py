"""Memmap reader: instances, labels, label masks, repetition masking, order, resume, errors."""

from __future__ import annotations

from pathlib import Path

import re

import numpy as np
import pytest

from trainer.data import DataError, DataLoader, MemmapDataset, discover_token_files, epoch_order
from trainer.loss import IGNORE_INDEX
from trainer.repetition import repetition_keep_mask

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def write_part(directory: Path, name: str, tokens, mask=None) -> np.ndarray:
    directory.mkdir(parents=True, exist_ok=True)
    tokens = np.asarray(tokens, dtype="<u4")
    tokens.tofile(directory / f"{name}.npy")
    if mask is not None:
        np.asarray(mask, dtype=np.bool_).tofile(directory / f"{name}.label_mask.npy")
    return tokens


def test_instances_labels_and_per_file_cut(tmp_path):
    a = write_part(tmp_path, "part-00000", np.arange(0, 25))     # 3 instances of 8, tail of 1 dropped
    b = write_part(tmp_path, "part-00001", np.arange(100, 116))  # 2 instances
    ds = MemmapDataset(tmp_path, seq_len=8, repetition="off")
    assert len(ds) == 5 and ds.dropped_tail_tokens == 1 and ds.total_tokens == 41
    ids, labels, masked, rep, _ = ds.instance(3)
    assert ids.tolist() == b[:8].tolist() and ids.dtype == np.int64
    assert labels.tolist() == b[1:8].tolist() + [IGNORE_INDEX]
    ids, labels, _, _, _ = ds.instance(2)
    assert ids.tolist() == a[16:24].tolist()  # an instance never straddles files
    with pytest.raises(IndexError):
        ds.instance(5)


def test_label_mask_file_masks_labels(tmp_path):
    tokens = np.arange(1, 17)
    mask = np.ones(16, dtype=bool)
    mask[[0, 3, 9, 15]] = False
    write_part(tmp_path, "p", tokens, mask)
    ds = MemmapDataset(tmp_path, seq_len=8, repetition="off")
    ids, labels, n_masked, _, _ = ds.instance(0)
    # label j is the token at position j+1; position 3 masked -> label 2; position 0 is never a label
    assert labels.tolist() == [2, 3, IGNORE_INDEX, 5, 6, 7, 8, IGNORE_INDEX] and n_masked == 1
    ids, labels, n_masked, _, _ = ds.instance(1)
    assert labels.tolist() == [IGNORE_INDEX, 11, 12, 13, 14, 15, IGNORE_INDEX, IGNORE_INDEX] and n_masked == 2


def test_repetition_spans_are_masked_even_across_instance_edges(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(1000, 50_000, 4096)
    tokens[1000:1000 + 3 * 40] = np.tile([7, 8, 9], 40)   # straddles the 1024 boundary
    tokens[3000:3000 + 31] = 5                             # 31 repeats: kept
    write_part(tmp_path, "p", tokens)
    ds = MemmapDataset(tmp_path, seq_len=1024, repetition="mask_spans")
    global_keep = repetition_keep_mask(tokens)
    total_rep = 0
    for i in range(4):
        ids, labels, _, n_rep, _ = ds.instance(i)
        expected = np.where(global_keep[i * 1024 + 1:(i + 1) * 1024], ids[1:], IGNORE_INDEX)
        assert labels[:-1].tolist() == expected.tolist()
        total_rep += n_rep
    # 120 repeated tokens, of which token 1024 opens instance 1 and is never a label
    assert total_rep == 119
    # the second instance holds only 96 of the 120 tokens (32 copies): still masked
    assert (ds.instance(1)[1][:95] == IGNORE_INDEX).all() and ds.instance(1)[1][95] != IGNORE_INDEX
    off = MemmapDataset(tmp_path, seq_len=1024, repetition="off")
    assert (off.instance(1)[1][:-1] != IGNORE_INDEX).all()


def test_repetition_straddling_just_32_copies_across_the_edge(tmp_path):
    """16 copies before the edge and 16 after: neither instance alone holds 32."""
    rng = np.random.default_rng(1)
    tokens = rng.integers(1000, 50_000, 512)
    tokens[256 - 32: 256 + 32] = np.tile([3, 4], 32)
    write_part(tmp_path, "p", tokens)
    ds = MemmapDataset(tmp_path, seq_len=256, repetition="mask_spans")
    assert (ds.instance(0)[1][256 - 33: 255] == IGNORE_INDEX).all()
    assert (ds.instance(1)[1][:31] == IGNORE_INDEX).all()
    assert ds.instance(1)[1][32] != IGNORE_INDEX


def test_numpy_header_mask_is_accepted_but_token_header_is_an_error(tmp_path):
    tokens = np.arange(16, dtype="<u4")
    tokens.tofile(tmp_path / "a.npy")
    mask = np.ones(16, dtype=bool)
    mask[5] = False
    np.save(tmp_path / "a.label_mask.npy", mask)  # with a .npy header
    ds = MemmapDataset(tmp_path, seq_len=8, repetition="off")
    assert ds.instance(0)[1][4] == IGNORE_INDEX
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "b.npy", tokens)
    with pytest.raises(DataError, match="header"):
        MemmapDataset(bad, seq_len=8)


@pytest.mark.parametrize("case", ["odd_size", "mask_length", "vocab", "empty_dir", "too_short", "no_tokens", "missing"])
def test_bad_inputs_give_clear_errors(tmp_path, case):
    d = tmp_path / "d"
    d.mkdir()
    if case == "odd_size":
        (d / "p.npy").write_bytes(b"\x01\x00\x00\x00\x02\x00")
        match = "whole number"
    elif case == "mask_length":
        write_part(d, "p", np.arange(16), np.ones(15, dtype=bool))
        match = "15 entries"
    elif case == "vocab":
        write_part(d, "p", [1, 2, 3, 100_300, 4, 5, 6, 7])
        match = "100300 at offset 3"
    elif case == "empty_dir":
        (d / "notes.txt").write_text("no tokens here")
        match = "no token files"
    elif case == "too_short":
        write_part(d, "p", np.arange(5))
        match = "hold no instance"
    elif case == "no_tokens":  # an empty build: "use a shorter --seq-len" could not help (a tester)
        write_part(d, "p", np.arange(0))
        match = "hold no tokens at all"
    else:
        d = tmp_path / "nope"
        match = "does not exist"
    with pytest.raises(DataError, match=match):
        ds = MemmapDataset(d, seq_len=8, vocab_size=100_278)
        ds.instance(0)


def test_an_empty_directory_among_several_data_paths_is_refused(tmp_path):
    """A copy that never arrived, given beside one that did: the run trained on the other alone,
    unsaid (a missing path was refused; found by a tester)."""
    write_part(tmp_path / "good", "part-00000", np.arange(16))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"no token files \\(\\*.npy\\) found in {tmp_path / 'empty'}$"):
        discover_token_files([tmp_path / "good", tmp_path / "empty"])


@pytest.mark.parametrize("case", ["odd_size", "mask_length", "npy_header"])
def test_scan_data_refuses_what_the_dataset_would(tmp_path, case):
    """trainer.run's start-up checks (agreed on by the ranks) go through scan_data: a token file
    or mask the dataset refuses when the Trainer opens it was found only after the agreement,
    and the other ranks learnt it from a broken collective (found by a tester)."""
    from trainer.data import scan_data

    if case == "odd_size":
        (tmp_path / "p.npy").write_bytes(b"\x01\x00\x00\x00\x02\x00")
    elif case == "mask_length":
        write_part(tmp_path, "p", np.arange(16), np.ones(15, dtype=bool))
    else:
        np.save(tmp_path / "p.npy", np.arange(16, dtype=np.uint32))
    with pytest.raises(DataError) as caught:
        MemmapDataset(tmp_path, seq_len=8)
    with pytest.raises(DataError, match=re.escape(str(caught.value))):
        scan_data([tmp_path])


def _scan_counting(build: Path, n_parts: int, monkeypatch) -> tuple[list[int], int, int]:
    """scan_data over a build of `n_parts` parts (every other one with a label mask): the stats of
    each token file, the lookups of the build's report.json, and the memmaps made."""
    import os

    from trainer.data import scan_data

    for k in range(n_parts):
        write_part(build, f"part-{k:05d}", np.arange(16), np.ones(16, dtype=bool) if k % 2 else None)
    (build / "report.json").write_text("{}")
    stats: dict[str, int] = {}
    maps = []
    real_stat, real_memmap = os.stat, np.memmap

    def counting_stat(path, *args, **kwargs):
        stats[os.fspath(path)] = stats.get(os.fspath(path), 0) + 1
        return real_stat(path, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(os, "stat", counting_stat)
        patched.setattr(np, "memmap", lambda *args, **kwargs: maps.append(args) or real_memmap(*args, **kwargs))
        layout = scan_data([build])
    assert len(layout.files) == n_parts and list(layout.builds) == [build]
    return ([stats.get(str(build / f"part-{k:05d}.npy"), 0) for k in range(n_parts)],
            stats.get(str(build / "report.json"), 0), len(maps))


def test_scan_data_stats_each_part_twice_maps_none_and_asks_for_the_report_once(tmp_path, monkeypatch):
    """trainer.run's start-up scan of a mix of thousands of parts (a 300B mix; t235): each token file
    was stat'ed three times and memory-mapped (label masks too) only to be dropped, the dataset mapping
    them again, and the build's report.json was looked up once per part. Counted, not timed: two stats
    a part (the walk's, the size's), no memmap, and as many report.json lookups for 40 parts as for 2."""
    few = _scan_counting(tmp_path / "few", 2, monkeypatch)
    many = _scan_counting(tmp_path / "many", 40, monkeypatch)
    assert max(many[0]) <= 2 and max(few[0]) <= 2
    assert many[2] == few[2] == 0
    assert many[1] == few[1]


def test_a_mix_of_more_parts_than_file_descriptors_trains(tmp_path):
    """A mix holds thousands of parts (OLMo 2's stage-1 mix ~7,600, each with a label mask where it
    has one): the dataset mapped every token file and mask at start, a file descriptor each, and
    1,000 parts with masks ended in "[Errno 24] Too many open files" under the usual `ulimit -n`
    of 1,024 (t259). 200 parts with masks under a limit of 256: opened, every part read, the
    descriptors held at the end bounded."""
    import subprocess
    import sys

    for k in range(200):
        write_part(tmp_path, f"part-{k:05d}", np.arange(k * 16, k * 16 + 16), np.arange(16) % 3 > 0)
    script = f"""
import os, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from trainer.data import MemmapDataset
ds = MemmapDataset({str(tmp_path)!r}, seq_len=8, repetition="off")
first = [int(ds.instance(i)[0][0]) for i in range(len(ds))]
assert first == list(range(0, 200 * 16, 8)), first[:4]
print(len(ds), len(os.listdir("/proc/self/fd")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    instances, fds = map(int, done.stdout.split())
    assert instances == 400 and fds < 256


def test_a_token_file_cut_short_during_the_run_is_named(tmp_path):
    """Parts are mapped when read, not at start (a descriptor each, t259): one rewritten shorter
    since the dataset counted its instances gave short slices, and a step failed in an IndexError
    about array shapes, no file named."""
    write_part(tmp_path, "part-00000", np.arange(32))
    write_part(tmp_path, "part-00001", np.arange(32))
    ds = MemmapDataset(tmp_path, seq_len=8, repetition="off")
    write_part(tmp_path, "part-00001", np.arange(20))
    assert ds.instance(0)[0].tolist() == list(range(8))
    with pytest.raises(DataError, match="part-00001.npy: 20 tokens now, 32 when the run started"):
        ds.instance(7)


def test_start_up_stats_each_label_mask_once_and_opens_each_file_once(tmp_path, monkeypatch):
    """trainer.run's start-up on a mix of thousands of parts with label masks (t259): the report
    checks, the resume fingerprint and the dataset each looked the masks up again (8 stats of every
    mask, 10 on a resume) and the dataset reopened every file scan_data had checked. On a network
    mount that is per part, per rank. Counted over what trainer.run calls before the first step."""
    import builtins
    import hashlib
    import json
    import os

    from trainer.data import layout_fingerprint, scan_data
    from trainer.plan import data_tokens

    for k in range(6):
        write_part(tmp_path, f"part-{k:05d}", np.arange(16), np.ones(16, dtype=bool) if k % 2 else None)
    certified = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in tmp_path.glob("part-*")}
    (tmp_path / "report.json").write_text(json.dumps({"output": {"tokens": 96, "files_sha256": certified}}))
    looked: dict[tuple[str, str], int] = {}
    real_stat, real_open = os.stat, builtins.open

    def counted(kind, real):
        def call(path, *args, **kwargs):
            if not isinstance(path, int) and os.fspath(path).startswith(str(tmp_path / "part-")):
                looked[kind, os.path.basename(path)] = looked.get((kind, os.path.basename(path)), 0) + 1
            return real(path, *args, **kwargs)
        return call

    with monkeypatch.context() as patched:
        patched.setattr(os, "stat", counted("stat", real_stat))
        patched.setattr(builtins, "open", counted("open", real_open))
        layout = scan_data([tmp_path])
        assert data_tokens(layout)[0] == 96
        fingerprint = layout_fingerprint(layout, 8)
        ds = MemmapDataset(layout, seq_len=8, repetition="off")
    assert ds.fingerprint() == fingerprint and fingerprint["label_masks"] == [None, 16] * 3
    masks = [n for n in certified if n.endswith(".label_mask.npy")]
    assert [looked.get(("stat", n)) for n in masks] == [1, 1, 1]
    assert {looked.get(("open", n)) for n in certified if n.endswith(".npy")} == {1}
    assert ds.instance(3)[1][:7].tolist() == list(range(9, 16))


def test_discovery_skips_label_masks_and_sorts(tmp_path):
    write_part(tmp_path / "b", "part-00001", np.arange(8))
    write_part(tmp_path / "a", "part-00000", np.arange(8), np.ones(8, bool))
    files = discover_token_files(tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a/part-00000.npy", "b/part-00001.npy"]
    with pytest.raises(DataError, match="not a token file"):
        discover_token_files(tmp_path / "a" / "part-00000.label_mask.npy")


def test_a_label_mask_without_its_token_file_is_refused(tmp_path):
    """A token file renamed without its mask trained on every label the mask held back, unsaid
    (found by a tester)."""
    write_part(tmp_path, "part-00000", np.arange(8), np.zeros(8, bool))
    (tmp_path / "part-00000.npy").rename(tmp_path / "shard0.npy")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'part-00000.label_mask.npy'}: a label mask with no "
                                                  "token file part-00000.npy beside it; rename it with its token "
                                                  "file, or remove it: no mask would apply")):
        discover_token_files(tmp_path)
    (tmp_path / "part-00000.label_mask.npy").rename(tmp_path / "shard0.label_mask.npy")
    assert [f.name for f in discover_token_files(tmp_path)] == ["shard0.npy"]


def test_order_is_seeded_and_epochs_reshuffle():
    a, b = epoch_order(1000, 7, 0), epoch_order(1000, 7, 0)
    assert np.array_equal(a, b) and sorted(a.tolist()) == list(range(1000))
    assert not np.array_equal(a, epoch_order(1000, 8, 0))
    assert not np.array_equal(a, epoch_order(1000, 7, 1))
    # the order numpy's permutation gives (it was computed so: resumed runs keep their batches)
    assert np.array_equal(a, np.random.Generator(np.random.PCG64([7, 0])).permutation(np.arange(1000)))
    # a rank keeps its positions only: a 950M-instance order is 3.8 GB, held by every rank (a tester)
    for world_size in (2, 3, 8):
        for rank in range(world_size):
            assert np.array_equal(epoch_order(1000, 7, 0, rank, world_size), a[rank::world_size])


def test_ranks_hand_out_the_global_batches_of_one_rank(tmp_path):
    """Each of 4 ranks' batches, put together, are the global batches of a 1-rank loader, across epochs."""
    ds = make_loader_data(tmp_path)  # 37 instances, 4 global batches of 8 per epoch
    single = collect(DataLoader(ds, 8, seed=5, prefetch=False), 9)
    ranks = [collect(DataLoader(ds, 8, seed=5, rank=r, world_size=4, prefetch=False), 9) for r in range(4)]
    for step, batch in enumerate(single):
        assert batch[0::4] == ranks[0][step] and batch[1::4] == ranks[1][step]
        assert batch[2::4] == ranks[2][step] and batch[3::4] == ranks[3][step]


@pytest.mark.parametrize("before, after", [((3, 1), (4, 2)), ((6, 2), (8, 4)), ((5, 1), (6, 3))])
def test_a_resume_on_other_ranks_and_batch_goes_on_from_the_exact_instance(tmp_path, before, after):
    """(batch, ranks) before and after a resume: a cursor of 3 instances resumed on 2 ranks took
    positions 2-5 of the order, not 3-6: one instance trained twice, one skipped, unsaid (a tester)."""
    ds = make_loader_data(tmp_path)  # 37 instances
    (batch, world), (new_batch, new_world) = before, after
    order = epoch_order(len(ds), 5, 0).tolist()
    first = [DataLoader(ds, batch, seed=5, rank=r, world_size=world, prefetch=False) for r in range(world)]
    for loader in first:
        loader.next_batch()
    state = first[0].state_dict()
    ranks = [DataLoader(ds, new_batch, seed=0, rank=r, world_size=new_world) for r in range(new_world)]
    for loader in ranks:
        loader.load_state_dict(state)
    for step in range(3):  # the second batch shows what the prefetch thread loaded
        taken = [loader.next_batch().indices.tolist() for loader in ranks]
        start = batch + step * new_batch
        assert sorted(sum(taken, [])) == sorted(order[start: start + new_batch]), step
        for r in range(new_world):
            assert taken[r] == order[start + r: start + new_batch: new_world]
    for loader in ranks:
        loader.close()


def make_loader_data(tmp_path, n_tokens=16 * 37):
    write_part(tmp_path, "p", np.arange(n_tokens) % 50_000)
    return MemmapDataset(tmp_path, seq_len=16)


def collect(loader, n):
    return [loader.next_batch().indices.tolist() for _ in range(n)]


def test_loader_epochs_drop_last_and_cover_everything(tmp_path):
    ds = make_loader_data(tmp_path)  # 37 instances
    loader = DataLoader(ds, 8, seed=3)
    batches = collect(loader, 5)  # 4 per epoch, then the 5th is epoch 1
    first_epoch = sum(batches[:4], [])
    assert len(set(first_epoch)) == 32
    assert first_epoch == epoch_order(37, 3, 0)[:32].tolist()
    assert batches[4] == epoch_order(37, 3, 1)[:8].tolist()
    assert (loader.epoch, loader.cursor) == (1, 8)
    loader.close()


def test_loader_resume_mid_epoch_replays_the_same_batches(tmp_path):
    ds = make_loader_data(tmp_path)
    full = DataLoader(ds, 4, seed=11)
    reference = collect(full, 12)
    first = DataLoader(ds, 4, seed=11)
    head = collect(first, 5)
    state = first.state_dict()
    first.close()
    second = DataLoader(ds, 4, seed=0)  # seed comes from the state
    second.load_state_dict(state)
    assert head + collect(second, 7) == reference
    assert second.stats["instances"] == 28  # what this loader handed out
    full.close()
    second.close()


def test_loader_rejects_state_for_other_data(tmp_path):
    ds = make_loader_data(tmp_path / "a")
    other = make_loader_data(tmp_path / "b", n_tokens=16 * 40)
    state = DataLoader(ds, 4, seed=1, prefetch=False).state_dict()
    with pytest.raises(DataError, match="different data"):
        DataLoader(other, 4, seed=1, prefetch=False).load_state_dict(state)
    # what differs, named ("files, sizes or seq_len changed" left the user to find it; found by a tester)
    name = ds.files[0].path.name
    with pytest.raises(DataError, match=re.escape(f"the data position in ck/train_state.pt was saved for different "
                                                  f"data ({name} of 592 tokens there, 640 here); ")):
        DataLoader(other, 4, seed=1, prefetch=False).load_state_dict(state, where="ck/train_state.pt")
    shorter = MemmapDataset(tmp_path / "a", seq_len=8)
    with pytest.raises(DataError, match=r"^the checkpoint's data position was saved for different data \(seq_len 16 "
                                        r"there, 8 here\); resuming would not replay the same batches: resume with "
                                        r"the --data and --seq-len it was trained with$"):
        DataLoader(shorter, 4, seed=1, prefetch=False).load_state_dict(state)


def test_a_label_mask_that_came_or_went_since_the_save_is_refused(tmp_path):
    """The data fingerprint held file names, token counts and seq_len: a resume onto report-less data
    whose label mask had appeared or gone since the save went on, on other labels (found by a tester).
    A state saved before masks were fingerprinted still resumes: unknown is not a change."""
    ds = make_loader_data(tmp_path)
    state = DataLoader(ds, 4, seed=1, prefetch=False).state_dict()
    np.ones(16 * 37, dtype=bool).tofile(tmp_path / "p.label_mask.npy")
    masked = MemmapDataset(tmp_path, seq_len=16)
    with pytest.raises(DataError, match=r"saved for different data \(no p\.label_mask\.npy there, one here\); "):
        DataLoader(masked, 4, seed=1, prefetch=False).load_state_dict(state)
    with_mask = DataLoader(masked, 4, seed=1, prefetch=False).state_dict()
    np.save(tmp_path / "p.label_mask.npy", np.ones(16 * 37, dtype=bool))  # the same entries, with a .npy header
    with pytest.raises(DataError, match=r"\(p\.label_mask\.npy of 592 bytes there, 720 here\)"):
        DataLoader(MemmapDataset(tmp_path, seq_len=16), 4, seed=1, prefetch=False).load_state_dict(with_mask)
    (tmp_path / "p.label_mask.npy").unlink()
    with pytest.raises(DataError, match=r"\(p\.label_mask\.npy there, none here\)"):
        DataLoader(MemmapDataset(tmp_path, seq_len=16), 4, seed=1, prefetch=False).load_state_dict(with_mask)
    older = {**with_mask, "fingerprint": {k: v for k, v in with_mask["fingerprint"].items() if k != "label_masks"}}
    DataLoader(MemmapDataset(tmp_path, seq_len=16), 4, seed=1, prefetch=False).load_state_dict(older)


def write_build(directory: Path, seed: int, n_parts: int = 2, n_tokens: int = 16 * 20) -> Path:
    """A finished build: parts of `n_tokens` random ids each (equal names and sizes for every seed)
    and the report.json certifying their SHA-256, as `dolmino mix` writes it."""
    import hashlib
    import json

    rng = np.random.default_rng(seed)
    for k in range(n_parts):
        write_part(directory, f"part-{k:05d}", rng.integers(0, 50_000, n_tokens))
    certified = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(directory.glob("part-*"))}
    (directory / "report.json").write_text(json.dumps({"manifest": "m", "seed": seed, "output": {
        "tokens": n_parts * n_tokens, "files_sha256": certified}}))
    return directory


def test_a_resume_on_other_builds_of_the_same_part_names_and_sizes_is_refused(tmp_path):
    """The data fingerprint held each token file's basename and size: `--data A --data B` resumed as
    `--data B --data A`, or on another build of the same budget (same part names, same token counts),
    replaying other batches than those trained, unsaid (found by a tester). Each file's SHA-256 as its
    build's report.json certifies it tells them apart; a copy of the builds elsewhere still resumes,
    token files outside a build (no report.json) resume as before, and so does a state saved before
    the digests were fingerprinted."""
    import shutil

    from trainer.data import check_data_position, layout_fingerprint, scan_data, undigested_position_note

    a, b, c = (write_build(tmp_path / name, seed) for name, seed in (("A", 1), ("B", 2), ("C", 3)))
    loader = DataLoader(MemmapDataset([a, b], seq_len=16), 4, seed=1, prefetch=False)
    loader.next_batch()
    state = loader.state_dict()

    def resume(*paths):
        DataLoader(MemmapDataset(list(paths), seq_len=16), 4, seed=1, prefetch=False).load_state_dict(state)
        check_data_position(state["fingerprint"], layout_fingerprint(scan_data(list(paths)), 16))  # trainer.run's

    with pytest.raises(DataError, match=r"saved for different data \(the same token files in another order, 4 of 4 "
                                        r"elsewhere, as when the --data paths are given in another order\); "):
        resume(b, a)
    with pytest.raises(DataError, match=r"saved for different data \(token file 3 of 4, part-00000\.npy, holds other "
                                        r"tokens: SHA-256 [0-9a-f]{16}\.\.\. there, [0-9a-f]{16}\.\.\. here, as its "
                                        r"build's report\.json certifies, and 1 more file\(s\); another build of the "
                                        r"same part names and sizes\); "):
        resume(a, c)
    moved = tmp_path / "pulled"
    for build in (a, b):
        shutil.copytree(build, moved / build.name)
    resume(moved / "A", moved / "B")
    (moved / "B" / "report.json").unlink()  # a copy without its report: nothing says what it holds
    resume(moved / "A", moved / "B")
    older = {**state, "fingerprint": {k: v for k, v in state["fingerprint"].items() if k != "sha256"}}
    DataLoader(MemmapDataset([b, a], seq_len=16), 4, seed=1, prefetch=False).load_state_dict(older)
    certified = layout_fingerprint(scan_data([b, a]), 16)  # resumed on names and sizes: said (trainer.run prints it)
    assert undigested_position_note(older["fingerprint"], certified, "s.pt").startswith(
        "the data position in s.pt was saved without the token files' SHA-256")
    assert undigested_position_note(state["fingerprint"], certified, "s.pt") is None
    for build in (a, b):
        (build / "report.json").unlink()
    assert undigested_position_note(older["fingerprint"], layout_fingerprint(scan_data([a, b]), 16), "s.pt") is None
    raw = DataLoader(MemmapDataset([a, b], seq_len=16), 4, seed=1, prefetch=False).state_dict()
    assert raw["fingerprint"]["sha256"] == [None] * 4
    DataLoader(MemmapDataset([a, b], seq_len=16), 4, seed=1, prefetch=False).load_state_dict(raw)


def test_two_builds_of_other_sizes_given_in_the_other_order_are_said_to_be_reordered(tmp_path):
    """`--data demo micro` resumed as `--data micro demo` (two releases, each pulled on another machine)
    was refused as "part-00000.npy of 997,629 tokens there, 999,954 here (and 4 more file(s))": the builds'
    parts share names, not sizes, so the first file's size was named as if the data had changed (a tester).
    The same files in another order are said to be, masks and digests included; a changed file is still named."""
    from trainer.data import check_data_position, layout_fingerprint, scan_data

    a, b = write_build(tmp_path / "A", 1, n_tokens=16 * 20), write_build(tmp_path / "B", 2, n_tokens=16 * 30)
    saved = layout_fingerprint(scan_data([a, b]), 16)
    with pytest.raises(DataError, match=r"saved for different data \(the same token files in another order, 4 of 4 "
                                        r"elsewhere, as when the --data paths are given in another order\); "):
        check_data_position(saved, layout_fingerprint(scan_data([b, a]), 16))
    c = write_build(tmp_path / "C", 3, n_tokens=16 * 25)
    with pytest.raises(DataError, match=r"saved for different data \(part-00000\.npy of 320 tokens there, 480 here "
                                        r"\(and 3 more file\(s\)\)\); "):
        check_data_position(saved, layout_fingerprint(scan_data([b, c]), 16))


def test_peek_is_the_next_batch_without_moving_on(tmp_path):
    ds = make_loader_data(tmp_path)
    reference = collect(DataLoader(ds, 4, seed=2), 3)
    loader = DataLoader(ds, 4, seed=2)
    assert loader.peek().indices.tolist() == reference[0] == loader.peek().indices.tolist()
    assert (loader.epoch, loader.cursor) == (0, 0) and loader.stats["instances"] == 0
    assert collect(loader, 3) == reference
    loader.close()


def test_a_pulled_release_without_its_report_json_is_told_to_pull_again(tmp_path):
    """A pulled release (RELEASE.json beside the build's files) whose report.json was removed on the machine
    that pulled it was "an incomplete dolmino build ... rerun the same build command to finish it": that
    machine never had the build (a tester, on the second of two machines that pulled one release)."""
    from dolmino import memmap
    from trainer import data

    assert data.RELEASE_FILE == memmap.RELEASE_FILE  # the trainer's copy of the name, kept without importing dolmino
    pulled = tmp_path / "demo-v1"
    write_part(pulled, "part-00000", np.arange(64))
    (pulled / "_plan.json").write_text("{}")
    (pulled / "RELEASE.json").write_text("{}")
    with pytest.raises(DataError, match=f"^{re.escape(str(pulled))} is a pulled release \\(RELEASE\\.json\\) without "
                                        r"its report\.json, which the release holds: removed since the pull; remove "
                                        "the directory and pull the release again$"):
        discover_token_files(tmp_path)


def test_an_unfinished_release_pull_is_named_as_one(tmp_path):
    """A killed `dolmino release pull` leaves `.NAME.pull-XXXX` (holding `.pull-owner`) beside NAME: under a
    --data directory it was called an incomplete dolmino build, to be finished by rerunning the build (a tester)."""
    from dolmino import release
    from trainer import data

    assert data.PULL_OWNER == release.PULL_OWNER  # the trainer's copy of the name, kept without importing boto3
    write_part(tmp_path / "demo", "part-00000", np.arange(64))
    (tmp_path / "demo" / "report.json").write_text("{}")
    pulling = tmp_path / ".demo.pull-0123456789ab"
    write_part(pulling, "part-00000", np.arange(64))
    (pulling / "_plan.json").write_text("{}")
    (pulling / "report.json").write_text("{}")  # downloaded, yet not every file verified
    (pulling / ".pull-owner").write_text("host 1 2")  # what dolmino.release's pull writes
    for given in (tmp_path, pulling):
        with pytest.raises(DataError, match=f"^{re.escape(str(pulling))} is the temporary directory of an unfinished "
                                            f"`dolmino release pull` into {re.escape(str(tmp_path / 'demo'))} "
                                            r"\(it holds \.pull-owner; .*\): rerun that pull to finish it, or remove "
                                            "the directory$"):
            discover_token_files(given)
    # Files arrive in name order: a pull that has fetched a part's label mask and not yet its token file
    (pulling / "part-00000.npy").unlink()
    (pulling / "report.json").unlink()
    np.ones(64, dtype=np.bool_).tofile(pulling / "part-00000.label_mask.npy")
    with pytest.raises(DataError, match=f"^{re.escape(str(pulling))} is the temporary directory of an unfinished "):
        discover_token_files(tmp_path)


def test_token_files_named_one_by_one_from_an_incomplete_build_are_refused(tmp_path):
    """`--data out/part-00000.npy` of a killed build was trained on unsaid, where `--data out` is refused: its parts
    may be another plan's that the rerun has not replaced yet (found by a tester)."""
    killed = tmp_path / "out"
    write_part(killed, "part-00000", np.arange(64))
    (killed / "_plan.json").write_text("{}")
    with pytest.raises(DataError, match=f"^{re.escape(str(killed))} is an incomplete dolmino build"):
        discover_token_files(killed / "part-00000.npy")
    (killed / "report.json").write_text("{}")  # finished: the user's pick of its files is theirs
    assert discover_token_files(killed / "part-00000.npy") == [killed / "part-00000.npy"]
    write_part(tmp_path / "other", "tokens", np.arange(64))  # memmaps of another tool: no build markers
    assert discover_token_files(tmp_path / "other" / "tokens.npy") == [tmp_path / "other" / "tokens.npy"]


def test_rank_striding_partitions_each_global_batch(tmp_path):
    ds = make_loader_data(tmp_path)
    single = collect(DataLoader(ds, 8, seed=5, prefetch=False), 6)
    ranks = [collect(DataLoader(ds, 8, seed=5, rank=r, world_size=4, prefetch=False), 6) for r in range(4)]
    for step in range(6):
        parts = [ranks[r][step] for r in range(4)]
        assert all(len(p) == 2 for p in parts)
        assert sorted(sum(parts, [])) == sorted(single[step])
        assert parts[1] == single[step][1::4]
    with pytest.raises(DataError, match="divisible"):
        DataLoader(ds, 6, seed=5, world_size=4)
    with pytest.raises(DataError, match="fewer than one global batch"):
        DataLoader(ds, 64, seed=5)


def test_real_text_written_by_dolmino_reads_back(tmp_path):
    """Tokenize real corpus documents, write them with dolmino's memmap writer, train-read them."""
    if not CORPUS.is_dir():
        pytest.skip(f"shared corpus {CORPUS} is missing (CI clones the repo with shared/ beside it)")
    from tokenizers import Tokenizer

    from dolmino.assets import dolma2_tokenizer_path
    from dolmino.documents import Quarantine, read_documents
    from dolmino.memmap import MemmapPartWriter

    try:
        tok = Tokenizer.from_file(str(dolma2_tokenizer_path()))
    except Exception as exc:  # assets not fetched on this machine
        pytest.skip(f"dolma2 tokenizer unavailable: {exc}")
    writer = MemmapPartWriter(str(tmp_path), 0, eos_token_id=100257, label_mask=True)
    stream, stream_mask = [], []
    for n, (line, doc) in enumerate(read_documents(str(CORPUS / "code.jsonl.zst"), Quarantine())):
        if n == 40:
            break
        ids = np.asarray(tok.encode(doc["text"], add_special_tokens=False).ids, dtype=np.uint32)
        mask = np.ones(len(ids), dtype=bool)
        mask[:2] = False  # e.g. a prompt that is not trained on
        writer.add(ids, doc["id"], "code", f"code:{line}", mask=mask)
        stream.extend(ids.tolist() + [100257])
        stream_mask.extend(mask.tolist() + [True])
    writer.close()
    ds = MemmapDataset(tmp_path, seq_len=256, vocab_size=100_278, repetition="mask_spans")
    assert ds.files[0].mask_path is not None
    n = len(ds)
    assert n == len(stream) // 256
    stream = np.asarray(stream)
    keep = np.asarray(stream_mask) & repetition_keep_mask(stream)
    masked = 0
    for i in range(n):
        ids, labels, n_mask, n_rep, _ = ds.instance(i)
        window = slice(i * 256, (i + 1) * 256)
        assert ids.tolist() == stream[window].tolist()
        assert labels[:-1].tolist() == np.where(keep[window][1:], ids[1:], IGNORE_INDEX).tolist()
        masked += n_mask
    assert masked >= 30  # two masked tokens per document, minus those that open an instance
    assert len(tok.decode(stream[:200].tolist())) > 100
    loader = DataLoader(ds, 4, seed=1)
    for _ in range(3):
        loader.next_batch()
    s = loader.stats
    assert s["labels"] == 12 * 255 == s["targets"] + s["masked_by_label_mask"] + s["masked_by_repetition"]
    loader.close()


def test_olmo_core_style_memmaps_need_no_sidecar(tmp_path):
    """OLMo-core's own token files: raw uint32 written through np.memmap, nested directories,
    no .csv.gz sidecar and no label mask. They must read exactly like dolmino's parts."""
    from trainer_memmaps import _encoder

    if not CORPUS.is_dir():
        pytest.skip(f"shared corpus {CORPUS} is missing")
    from dolmino.documents import Quarantine, read_documents

    encode = _encoder()
    stream = []
    for n, (_, doc) in enumerate(read_documents(str(CORPUS / "encyclopedic.jsonl.zst"), Quarantine())):
        if n == 6:
            break
        stream.extend(encode(doc["text"])[:400] + [100257])
    stream = np.asarray(stream, dtype=np.uint32)
    half = len(stream) // 2
    root = tmp_path / "preprocessed" / "gcide" / "allenai" / "dolma2-tokenizer"
    for i, chunk in enumerate((stream[:half], stream[half:])):
        root.mkdir(parents=True, exist_ok=True)
        out = np.memmap(root / f"part-{i}-00000.npy", dtype=np.uint32, mode="w+", shape=(len(chunk),))
        out[:] = chunk
        out.flush()
        del out
    (tmp_path / "preprocessed" / "README.txt").write_text("not a token file")
    assert sorted(p.name for p in root.iterdir()) == ["part-0-00000.npy", "part-1-00000.npy"]  # nothing else
    ds = MemmapDataset(tmp_path / "preprocessed", seq_len=64, vocab_size=100_278, repetition="mask_spans")
    assert [f.mask_path for f in ds.files] == [None, None]
    assert len(ds) == half // 64 + (len(stream) - half) // 64
    keep = np.concatenate([repetition_keep_mask(stream[:half]), repetition_keep_mask(stream[half:])])
    parts = (stream[:half], stream[half:])
    i = 0
    for part_idx, part in enumerate(parts):
        offset = 0 if part_idx == 0 else half
        for j in range(len(part) // 64):
            ids, labels, n_mask, _, _ = ds.instance(i)
            window = slice(offset + j * 64, offset + (j + 1) * 64)
            assert ids.tolist() == stream[window].tolist() and n_mask == 0
            assert labels[:-1].tolist() == np.where(keep[window][1:], ids[1:], IGNORE_INDEX).tolist()
            i += 1
    assert i == len(ds)


def test_builds_without_certified_digests_are_named_and_reports_are_read_once(tmp_path, monkeypatch):
    """A build whose report.json predates output.files_sha256 resumes on names and sizes alone, unsaid: the note
    says so (trainer.run prints it once, on a resume). The walk parses each report.json once for every check
    after it (they read and parsed it five times)."""
    import json

    from trainer.data import scan_data, uncertified_builds_note
    from trainer.plan import check_data_special_ids, data_tokens, data_vocab_size
    from trainer.tokenizer_files import data_tokenizer

    new, old = write_build(tmp_path / "new", 1), write_build(tmp_path / "old", 2)
    report = json.loads((old / "report.json").read_text())
    del report["output"]["files_sha256"]
    (old / "report.json").write_text(json.dumps(report))
    assert uncertified_builds_note(scan_data([new])) is None
    layout = scan_data([new, old])
    note = uncertified_builds_note(layout)
    assert note.startswith(f"{old / 'report.json'} records no output.files_sha256 (a build made before reports "
                           "recorded them): the resume checks its token files") and "rebuild it" in note
    assert set(layout.certified) == {new / "part-00000.npy", new / "part-00001.npy"}
    reads = []
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (reads.append(self.name), real(self, *a, **k))[1])
    layout = scan_data([new, old])
    args = type("A", (), {"model": None, "recipe": None})()
    plan = type("P", (), {"model": type("M", (), {"eos_token_id": 0, "pad_token_id": 0})()})()
    data_tokens(layout), data_vocab_size(layout), data_tokenizer(layout)
    check_data_special_ids(args, plan, None, layout)
    assert reads.count("report.json") == 2  # one a build
    (new / "report.json").write_text("{")  # a damaged one: the walk keeps why, a check that needs it says so
    with pytest.raises(DataError, match=re.escape(f"{new / 'report.json'}: unreadable (")):
        data_tokens(scan_data([new]))
    assert data_vocab_size(scan_data([new])) is None
