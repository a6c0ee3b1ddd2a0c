"""Checkpoints: bitwise resume, atomic background writes, RNG state, pruning, soups."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.checkpoint import (
    MODEL_FILE, OPTIM_FILE, STATE_FILE, Checkpointer, CheckpointFormatError, CheckpointWriteError, capture_rng_state,
    complete_checkpoints, files_fingerprint, latest_checkpoint, load_checkpoint, load_model_weights, restore_rng_state,
    step_dir_name, weight_files,
)
from trainer.config import ModelConfig, RunConfig, TrainConfig
from trainer.distributed import DistEnv
from trainer.model import OLMo2
from trainer.soup import average_state_dicts, main as soup_main, soup
from trainer.train import Trainer

CPU = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
SMALL = dict(d_model=32, n_layers=2, n_heads=2, vocab_size=512, max_seq_len=64)


def make_data(directory: Path, n_tokens: int = 20 * 32, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 512, n_tokens).astype("<u4")
    tokens[100:100 + 40] = 9  # a repeated span the loader masks
    tokens.tofile(directory / "part-00000.npy")
    mask = rng.random(n_tokens) > 0.1
    mask.tofile(directory / "part-00000.label_mask.npy")
    return directory


def make_run(data: Path, **train) -> RunConfig:
    defaults = dict(seq_len=32, global_batch_size=4, micro_batch_size=2, max_steps=6, lr=3e-3, warmup_steps=2,
                    metrics_interval=2, gc_interval=3, seed=5)
    return RunConfig(model=ModelConfig(**SMALL), train=TrainConfig(**{**defaults, **train}), data_paths=[str(data)])


def quiet(_msg):
    pass


def test_resume_reproduces_the_uninterrupted_run_bitwise(tmp_path):
    data = make_data(tmp_path / "data")  # 20 instances, batch 4: the 6 steps cross an epoch edge
    full = Trainer(make_run(data, save_interval=3), CPU, tmp_path / "full", log=quiet)
    result = full.fit()
    assert [r["step"] for r in result.history] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "full" / "step000003" / "model.pt").is_file()
    assert full.loader.epoch == 1
    resumed = Trainer(make_run(data, save_interval=3), CPU, tmp_path / "resumed",
                      resume=tmp_path / "full" / "step000003", log=quiet)
    assert resumed.step == 3
    rest = resumed.fit()
    assert rest.losses == result.losses[3:]  # exact float equality
    assert [r["grad_norm"] for r in rest.history] == [r["grad_norm"] for r in result.history[3:]]
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert resumed.loader.state_dict() == full.loader.state_dict()
    assert rest.data_stats == result.data_stats  # accounting carries over the resume


def test_resume_with_another_data_seed_warns_and_records_the_order_it_continues(tmp_path):
    """The position saved in a checkpoint indexes its own seed's order, so that order goes on; the
    new checkpoint's config.json used to record the seed asked for, which the run never used."""
    data = make_data(tmp_path / "data")
    Trainer(make_run(data, max_steps=3), CPU, tmp_path / "run", log=quiet).fit()  # data order from seed=5
    messages = []
    resumed = Trainer(make_run(data, data_seed=9), CPU, tmp_path / "run", resume=tmp_path / "run",
                      log=messages.append)
    assert any(m.startswith("warning: the data order seed 9 (--data-seed, default --seed) is not used: resuming "
                            "continues step000003's order, seed 5") for m in messages)
    resumed.fit()
    saved = json.loads((tmp_path / "run" / "step000006" / "config.json").read_text())["train"]
    assert saved["data_seed"] == 5 and resumed.loader.seed == 5
    same = []
    Trainer(make_run(data, data_seed=5), CPU, tmp_path / "run", resume=tmp_path / "run" / "step000003",
            log=same.append)
    assert not any("data order" in m for m in same)  # data_seed 5 is the order seed=5 drew: nothing changes


def test_stop_and_resume_with_a_fixed_horizon(tmp_path):
    """Stopping early (truncation) and continuing: same LR curve because the horizon is in tokens."""
    data = make_data(tmp_path / "data")
    horizon = 6 * 4 * 32
    whole = Trainer(make_run(data, horizon_tokens=horizon), CPU, tmp_path / "a", log=quiet).fit()
    Trainer(make_run(data, max_steps=3, horizon_tokens=horizon), CPU, tmp_path / "b", log=quiet).fit()
    second = Trainer(make_run(data, horizon_tokens=horizon), CPU, tmp_path / "b", resume=tmp_path / "b",
                     log=quiet).fit()
    assert second.start_step == 3 and second.losses == whole.losses[3:]
    assert [r["lr"] for r in second.history] == [r["lr"] for r in whole.history[3:]]
    assert latest_checkpoint(tmp_path / "b").name == "step000006"
    metrics = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]


def test_resume_after_a_kill_keeps_one_metrics_row_per_step(tmp_path):
    """A run killed after its last checkpoint had logged the steps it then trains again on
    resume: metrics.jsonl held them twice (and a torn last line). Resume drops the rows past
    its step, so the file is the one an uninterrupted run writes."""
    data = make_data(tmp_path / "data")
    horizon = 6 * 4 * 32
    whole = Trainer(make_run(data, horizon_tokens=horizon), CPU, tmp_path / "a", log=quiet).fit()
    Trainer(make_run(data, max_steps=3, horizon_tokens=horizon), CPU, tmp_path / "b", log=quiet).fit()
    metrics = tmp_path / "b" / "metrics.jsonl"
    with metrics.open("a") as fh:  # what the killed run logged after step 3's checkpoint
        fh.write(json.dumps({"step": 4, "loss": 99.0}) + "\n" + json.dumps({"step": 5, "loss": 99.0}) + "\n")
        fh.write('{"step": 6, "lo')
    lines: list[str] = []
    Trainer(make_run(data, horizon_tokens=horizon), CPU, tmp_path / "b", resume=tmp_path / "b",
            log=lines.append).fit()
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows[3:]] == whole.losses[3:]
    assert "metrics.jsonl: dropped 3 row(s) past step 3, which this run trains again" in lines


def test_loss_decreases_and_masks_are_accounted(tmp_path):
    data = make_data(tmp_path / "data")
    run = make_run(data, max_steps=12, lr=1e-2)
    result = Trainer(run, CPU, tmp_path / "run", log=quiet).fit()
    assert result.losses[-1] < result.losses[0] - 0.1
    s = result.data_stats
    assert s["labels"] == s["targets"] + s["masked_by_label_mask"] + s["masked_by_repetition"]
    assert s["masked_by_label_mask"] > 0


def test_checkpoint_files_are_complete_and_weights_only_loadable(tmp_path):
    model = OLMo2(ModelConfig(**SMALL))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 512, (1, 8))).sum().backward()
    opt.step()
    ck = Checkpointer(tmp_path / "ckpt")
    path = ck.save(7, model, opt, {"note": "x"}, {"model": ModelConfig(**SMALL).to_dict()})
    with torch.no_grad():  # training goes on while the thread writes: the checkpoint must not see it
        for p in model.parameters():
            p.add_(1.0)
    ck.wait()
    assert path.name == "step000007" and (tmp_path / "ckpt" / "latest").read_text().strip() == "step000007"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["latest", "step000007"]  # no temp dirs
    for name in ("model.pt", "optim.pt", "train_state.pt"):
        torch.load(path / name, weights_only=True)
    weights, config = load_model_weights(tmp_path / "ckpt")
    live = dict(model.named_parameters())
    assert all(torch.equal(weights[k] + 1.0, live[k].detach()) for k in weights)
    assert json.loads((path / "config.json").read_text())["step"] == 7


def test_files_fingerprint_tells_copies_from_other_weights(tmp_path):
    """What ranks compare after loading --init-from or resuming: a copy matches, other weights of
    the same shapes (another seed) do not, nor does a file that is missing or renamed."""
    import shutil

    data = make_data(tmp_path / "data")
    for seed in (5, 6):
        Trainer(make_run(data, max_steps=1, warmup_steps=0, seed=seed), CPU, tmp_path / f"seed{seed}", log=quiet).fit()
    a, b = tmp_path / "seed5" / "step000001", tmp_path / "seed6" / "step000001"
    assert (a / "model.pt").stat().st_size == (b / "model.pt").stat().st_size > 16 * 4096  # sampled, not read whole
    shutil.copytree(a, tmp_path / "copy")
    assert files_fingerprint(a) == files_fingerprint(tmp_path / "copy") < 1 << 48
    assert files_fingerprint(a / "model.pt") == files_fingerprint(tmp_path / "copy" / "model.pt")
    assert files_fingerprint(a / "model.pt") != files_fingerprint(b / "model.pt")
    (tmp_path / "copy" / "optim.pt").rename(tmp_path / "copy" / "optim.pt.old")
    assert files_fingerprint(tmp_path / "copy") != files_fingerprint(a)
    # --init-from compares the weight files only: a hub download's own records may differ
    hub = tmp_path / "hub"
    shutil.copytree(a, hub)
    (hub / ".cache" / "huggingface").mkdir(parents=True)
    (hub / ".cache" / "huggingface" / "model.pt.metadata").write_text("etag\n1733300000.123")
    (hub / "README.md").write_text("downloaded on node 3")
    assert weight_files(hub) == [hub / "model.pt", hub / "optim.pt", hub / "train_state.pt"]
    assert files_fingerprint(hub) == files_fingerprint(a)


def test_files_fingerprint_of_thousands_of_files_reads_a_bounded_number_of_samples(tmp_path, monkeypatch):
    """Every rank fingerprints the mix's token files and masks at start: 16 samples of 4 KB each,
    ~243,000 random reads per rank for OLMo 2's ~7,600 parts with masks (t259). Past 256 files each
    gives fewer, one at least (its middle), so another build's parts (other bytes, same sizes) still differ."""
    import builtins

    import trainer.checkpoint as checkpoint

    rng = np.random.default_rng(0)
    root = tmp_path / "mix"
    root.mkdir()
    files = []
    for i in range(600):
        f = root / f"part-{i:05d}.npy"
        f.write_bytes(rng.integers(0, 255, 40_000, dtype=np.uint8).tobytes())
        files.append(f)
    reads = []

    class Counted:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def seek(self, *args):
            return self.fh.seek(*args)

        def read(self, *args):
            data = self.fh.read(*args)
            reads.append(len(data))
            return data

    monkeypatch.setattr(checkpoint, "open", lambda *a, **k: Counted(builtins.open(*a, **k)), raising=False)
    before = files_fingerprint(root, files)
    assert len(reads) == 600 * 6 and sum(reads) == 600 * 6 * 4096  # 4096 samples // 600 files
    other = files[123]
    data = bytearray(other.read_bytes())
    data[0] ^= 1  # the first sample's
    other.write_bytes(bytes(data))
    assert files_fingerprint(root, files) != before
    monkeypatch.setattr(checkpoint, "_FINGERPRINT_BUDGET", 600)  # one sample a file: its middle
    reads.clear()
    before = files_fingerprint(root, files)
    assert len(reads) == 600
    data[len(data) // 2] ^= 1
    other.write_bytes(bytes(data))
    assert files_fingerprint(root, files) != before
    reads.clear()
    assert files_fingerprint(root, files[:10]) and reads == [40_000] * 10  # few files: 16 samples each, or whole


def _two_ranks_worker(rank: int, store: str, data: list, resume: list, out: str, train: dict) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    # A collective the other rank never joins fails in a minute, not gloo's 30: a hang fails the test.
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    env = DistEnv(rank=rank, local_rank=rank, world_size=2, device=torch.device("cpu"))
    outcome = None
    try:
        Trainer(make_run(Path(data[rank]), **train), env, Path(out) / f"run{rank}", resume=resume[rank], log=quiet)
        outcome = "ok"
    except ValueError as exc:
        outcome = str(exc)
    finally:
        if outcome is not None:  # what the rank said, kept before gloo is torn down (below)
            Path(f"{out}/outcome{rank}").write_text(outcome)
        # both ranks done before either tears gloo down: a peer's closed connection seen by gloo's
        # own thread aborted a rank now and then ("terminate called without an active exception")
        dist.barrier()
        dist.destroy_process_group()


def _two_ranks(tmp_path, data: list, resume: list, **train) -> list[str]:
    """What a Trainer built on each of 2 gloo ranks said ("ok", or its ValueError); `train`: TrainConfig fields."""
    import torch.multiprocessing as mp

    out = tmp_path / f"ranks-{len(list(tmp_path.glob('ranks-*')))}"
    out.mkdir()
    try:
        mp.spawn(_two_ranks_worker, args=(str(out / "store"), [str(d) for d in data],
                                          [None if r is None else str(r) for r in resume], str(out), train), nprocs=2)
    except mp.ProcessExitedException as exc:
        # gloo's own thread still aborts a rank now and then while the group is torn down, after both ranks
        # said what the test reads (a CI run under load); anything else, or before that, fails the test
        if exc.signal_name != "SIGABRT" or not all((out / f"outcome{rank}").exists() for rank in (0, 1)):
            raise
    return [(out / f"outcome{rank}").read_text() for rank in (0, 1)]


def test_ranks_that_read_different_data_or_checkpoints_stop(tmp_path):
    """Nodes that do not share a filesystem may hold different copies of the mix or of a
    checkpoint: every rank then stops at start with the reason, instead of training on."""
    same = make_data(tmp_path / "data")
    other = make_data(tmp_path / "other", seed=1)  # same size, other tokens
    assert all("the ranks read different training data (20..20 instances, different files)" in o
               for o in _two_ranks(tmp_path, [same, other], [None, None]))
    # what is compared is the files the dataset reads: a copy with other files beside them (a
    # pulled release's RELEASE.json) is the same data
    import shutil

    import hashlib
    import json

    pulled = tmp_path / "pulled"
    shutil.copytree(same, pulled)
    (pulled / "RELEASE.json").write_text("{}")
    # and the build's report.json, which a release holds (a pulled copy without it is told to pull again)
    part = pulled / "part-00000.npy"
    (pulled / "report.json").write_text(json.dumps({"output": {"files_sha256": {
        part.name: hashlib.sha256(part.read_bytes()).hexdigest()}}}))
    assert _two_ranks(tmp_path, [same, pulled], [None, None]) == ["ok", "ok"]
    for seed, steps in ((5, 2), (6, 2), (5, 3)):
        Trainer(make_run(same, max_steps=steps, seed=seed, save_interval=1), CPU, tmp_path / f"s{seed}-{steps}",
                log=quiet).fit()
    step2 = tmp_path / "s5-2" / "step000002"  # two ranks resuming the same checkpoint: tests/test_trainer_cli.py
    older = _two_ranks(tmp_path, [same, same], [step2, tmp_path / "s5-3" / "step000001"])
    assert all("ranks resumed from different checkpoints: steps 1..2" in o for o in older)
    reseeded = _two_ranks(tmp_path, [same, same], [step2, tmp_path / "s6-2" / "step000002"])
    assert all("steps 2..2" in o and "different files" in o for o in reseeded)


@pytest.mark.parametrize("damaged", [MODEL_FILE, OPTIM_FILE])
def test_a_checkpoint_damaged_on_one_node_stops_every_fsdp_rank(tmp_path, damaged):
    """Loading a checkpoint into an FSDP model is collective (rank 0 scatters each tensor): a model.pt
    or optim.pt that one node's copy could not read left the other ranks in that scatter and the
    node in the ranks' agreement, a hang until gloo's timeout (found by a tester). The ranks agree
    that every copy was read before loading: that node names its file, the others another rank."""
    import shutil

    data = make_data(tmp_path / "data")
    Trainer(make_run(data, max_steps=2, save_interval=1), CPU, tmp_path / "run", log=quiet).fit()
    nodes = [tmp_path / f"node{rank}" for rank in (0, 1)]  # each node's own copy of --save-dir
    for node in nodes:
        shutil.copytree(tmp_path / "run", node)
    file = nodes[1] / "step000002" / damaged
    file.write_bytes(file.read_bytes()[:1000])  # an interrupted copy
    said = _two_ranks(tmp_path, [data, data], nodes, fsdp=True)
    assert said[0] == f"rank 0: another rank could not load {nodes[0] / 'step000002'}; its error says why", said
    assert said[1].startswith(f"{file} cannot be read (") and "--resume " + str(nodes[1] / "step000001") in said[1]


def test_rng_state_round_trip():
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(3)
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_load_checkpoint_restores_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = OLMo2(ModelConfig(**SMALL))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 512, (1, 8))).sum().backward()
    opt.step()
    Checkpointer(tmp_path).save(1, model, opt, {}, {"model": ModelConfig(**SMALL).to_dict()}, background=False)
    after_save = torch.rand(2)
    torch.manual_seed(123)
    fresh = OLMo2(ModelConfig(**SMALL))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    state = load_checkpoint(tmp_path, fresh, fresh_opt)
    assert state["step"] == 1
    assert torch.equal(torch.rand(2), after_save)
    a, b = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert all(torch.equal(a[k]["exp_avg"], b[k]["exp_avg"]) for k in a)


def test_resume_applies_the_current_weight_decay_betas_and_eps(tmp_path):
    """torch's loader put the checkpoint's group settings back over the ones build_optimizer set: a
    resume with another --weight-decay logged and recorded the new value and kept the old one (found
    by a reviewer). As in OLMo-core, the config's settings apply; the moments come from the checkpoint."""
    import copy

    from trainer.optim import build_optimizer

    data = make_data(tmp_path / "data")
    Trainer(make_run(data, max_steps=2, weight_decay=0.1), CPU, tmp_path / "run", log=quiet).fit()
    messages = []
    resumed = Trainer(make_run(data, max_steps=3, weight_decay=0.05, betas=(0.8, 0.9), adam_eps=1e-6), CPU,
                      tmp_path / "run", resume=tmp_path / "run", log=messages.append)
    assert any("different recipe than step000002: weight_decay 0.1 -> 0.05" in m for m in messages)
    groups = resumed.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert all(tuple(g["betas"]) == (0.8, 0.9) and g["eps"] == 1e-6 for g in groups)
    # a step with them: as an optimizer built for the new config holding the same moments
    reference = copy.deepcopy(resumed.raw_model)
    ref_opt = build_optimizer(reference, resumed.run.train)
    ref_opt.load_state_dict({"state": copy.deepcopy(resumed.optimizer.state_dict()["state"]),
                             "param_groups": ref_opt.state_dict()["param_groups"]})
    for opt, model in ((resumed.optimizer, resumed.raw_model), (ref_opt, reference)):
        torch.manual_seed(1)
        for group in opt.param_groups:
            group["lr"] = 0.5  # large, so that a stale decay or beta shows
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
    for (name, a), b in zip(resumed.raw_model.named_parameters(), reference.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("legacy_names", [False, True], ids=["now", "saved-with-names"])
@pytest.mark.parametrize("decay_norms_before", [True, False])
def test_resume_with_the_other_decay_norms_decays_as_asked(tmp_path, monkeypatch, decay_norms_before, legacy_names):
    """A --no-decay-norms run resumed with --decay-norms ended in a KeyError traceback
    (param_groups.1.names.1): the per-group list of names trainer.optim kept was saved in optim.pt,
    and torch cannot map one whose length changed (found by a reviewer). Checkpoints saved with
    those names (`legacy_names`) resume too; the norms move group, their moments go with them."""
    import trainer.optim as optim

    data = make_data(tmp_path / "data")
    if legacy_names:  # the groups as trainer.optim built them before
        real = optim.param_groups

        def with_names(model, *args, **kwargs):
            named = {id(p): n for n, p in model.named_parameters()}
            return [{**g, "names": [named[id(p)] for p in g["params"]]} for g in real(model, *args, **kwargs)]

        monkeypatch.setattr(optim, "param_groups", with_names)
    Trainer(make_run(data, max_steps=2, decay_norms=decay_norms_before), CPU, tmp_path / "run", log=quiet).fit()
    monkeypatch.undo()
    saved = torch.load(tmp_path / "run" / "step000002" / OPTIM_FILE, weights_only=True)
    assert ("names" in saved["param_groups"][0]) == legacy_names
    resumed = Trainer(make_run(data, max_steps=3, decay_norms=not decay_norms_before), CPU, tmp_path / "run",
                      resume=tmp_path / "run", log=quiet)
    groups = resumed.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] and all("names" not in g for g in groups)
    norm = resumed.raw_model.norm.weight
    assert any(p is norm for p in groups[0 if not decay_norms_before else 1]["params"])
    for name, p in resumed.raw_model.named_parameters():
        assert torch.equal(resumed.optimizer.state[p]["exp_avg"], saved["state"][name]["exp_avg"]), name
    resumed.fit()


def test_failed_background_write_is_reported(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the save dir should be")
    model = OLMo2(ModelConfig(**SMALL))
    ck = Checkpointer(blocker)
    ck.save(1, model, torch.optim.AdamW(model.parameters()), {}, {})
    with pytest.raises(RuntimeError, match="writing a checkpoint failed"):
        ck.wait()


def test_a_failed_write_names_its_file_and_reason_and_leaves_no_partial_copy(tmp_path, monkeypatch):
    """A full disk during a save left `.stepN.tmpPID/` (a checkpoint's size, so the resumed run
    filled the disk again) and ended in ~45 lines of torch's "unexpected pos" with no path and no
    reason; a kill during a save left the same directory, removed only by --overwrite (found by a
    tester). Now: the partial copy is removed, one line names the file and the reason, and the next
    start removes what a dead writer left (a swapped-out step is put back)."""
    import errno
    import subprocess
    import sys

    import trainer.checkpoint as checkpoint

    model = OLMo2(ModelConfig(**SMALL))
    opt = torch.optim.AdamW(model.parameters())
    real_save = torch.save
    for failure, reason in ((OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
                            (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 52447488"),
                             "unexpected pos 52447488 (a full disk or a file-size limit")):
        def fails_on_optim(obj, path, *args, failure=failure, **kwargs):
            if Path(path).name == "optim.pt":
                Path(path).write_bytes(b"partial")
                raise failure
            return real_save(obj, path, *args, **kwargs)

        monkeypatch.setattr(checkpoint.torch, "save", fails_on_optim)
        ck = Checkpointer(tmp_path / "run")
        ck.save(2, model, opt, {}, {})
        written = tmp_path / "run" / "step000002" / "optim.pt"
        expected = re.escape(f"writing {written} failed: ") + ".*" + re.escape(reason)
        with pytest.raises(CheckpointWriteError, match=expected):
            ck.wait()
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []
    # a full disk: the space measured before the partial copy is removed (it was measured after,
    # on the removed directory: never "full"; found by a reviewer)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                        lambda p: (_ for _ in ()).throw(FileNotFoundError(p)) if not os.path.exists(p)
                        else type("usage", (), {"free": 1 << 20})())
    ck = Checkpointer(tmp_path / "run")
    ck.save(2, model, opt, {}, {})
    with pytest.raises(CheckpointWriteError, match=r"optim.pt failed: the disk is full \(1 MiB free\); \[enforce"):
        ck.wait()
    monkeypatch.undo()
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    synced = []
    real_fsync = checkpoint.os.fsync
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    Checkpointer(tmp_path / "run").save(3, model, opt, {}, {}, background=False)
    assert len(synced) >= 7  # four files, the step directory, --save-dir, and `latest` (and --save-dir again)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / "run" / f".step000004.tmp{pid}").mkdir()
    (tmp_path / "run" / "step000003").rename(tmp_path / "run" / f".step000003.old{pid}")
    (tmp_path / "run" / ".step000005.tmp1").mkdir()  # pid 1 is alive, but started after this was left:
    os.utime(tmp_path / "run" / ".step000005.tmp1", (0, 0))  # a predecessor's, in a restarted container
    done = Checkpointer(tmp_path / "run").sweep()
    assert done == [f"restored step000003 from .step000003.old{pid}", f"removed .step000004.tmp{pid}",
                    "removed .step000005.tmp1"]
    assert latest_checkpoint(tmp_path / "run").name == "step000003"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["latest", "step000003"]
    # a restarted container gives the trainer the PID its killed predecessor had (found by a reviewer)
    (tmp_path / "run" / "step000003").rename(tmp_path / "run" / f".step000003.old{os.getpid()}")
    assert Checkpointer(tmp_path / "run").sweep() == [f"restored step000003 from .step000003.old{os.getpid()}"]


def test_a_latest_pointer_that_is_not_text_is_no_pointer(tmp_path):
    """`latest` holding a non-UTF-8 byte was a UnicodeDecodeError traceback (found by a tester)."""
    model = OLMo2(ModelConfig(**SMALL))
    Checkpointer(tmp_path).save(1, model, torch.optim.AdamW(model.parameters()), {}, {}, background=False)
    (tmp_path / "latest").write_bytes(b"\xff")
    assert latest_checkpoint(tmp_path).name == "step000001"


def test_a_latest_checkpoint_without_its_train_state_is_refused_not_passed_over(tmp_path):
    """`latest` naming a step without train_state.pt (damage: checkpoints are renamed into place
    whole) fell back to the step before it, silently. A step gone altogether or no `latest` keeps
    the fallback; a file missing from a checkpoint is named, by every reader."""
    from trainer.checkpoint import load_json_file, resolve_checkpoint

    model = OLMo2(ModelConfig(**SMALL))
    opt = torch.optim.AdamW(model.parameters())
    for step in (1, 2):
        Checkpointer(tmp_path).save(step, model, opt, {}, {}, background=False)
    (tmp_path / "step000002" / STATE_FILE).unlink()
    for find in (latest_checkpoint, resolve_checkpoint):
        with pytest.raises(CheckpointFormatError, match=re.escape(
                f"{tmp_path / 'step000002'}, the newest checkpoint ({tmp_path / 'latest'} names it), has no "
                f"{STATE_FILE}; was it left out, e.g. by an interrupted copy? Copy it again, or resume the one before "
                f"it (--resume {tmp_path / 'step000001'})")):
            find(tmp_path)
    (tmp_path / "latest").unlink()  # no pointer: the newest complete one, as before
    assert latest_checkpoint(tmp_path).name == "step000001"
    (tmp_path / "latest").write_text("step000003\n")  # names a step that is gone: the same
    assert latest_checkpoint(tmp_path).name == "step000001"
    (tmp_path / "step000001" / MODEL_FILE).unlink()
    with pytest.raises(CheckpointFormatError, match=re.escape(f"{tmp_path / 'step000001' / MODEL_FILE} cannot be read "
                                                              f"(no such file); was it left out")):
        load_model_weights(tmp_path)
    with pytest.raises(CheckpointFormatError, match=re.escape(f"{tmp_path / 'x.json'} cannot be read (no such file); "
                                                              f"was it left out, e.g. by an interrupted download")):
        load_json_file(tmp_path / "x.json")


def test_keep_last_prunes_old_checkpoints(tmp_path):
    model = OLMo2(ModelConfig(**SMALL))
    opt = torch.optim.AdamW(model.parameters())
    ck = Checkpointer(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        ck.save(step, model, opt, {}, {})
    ck.wait()
    assert sorted(p.name for p in tmp_path.glob("step*")) == ["step000002", "step000003"]
    assert latest_checkpoint(tmp_path).name == "step000003"


def test_latest_and_pruning_order_checkpoints_by_step_past_six_digits(tmp_path):
    """step_dir_name pads to 6 digits, so from step 1,000,000 on the names no longer sort as the steps do."""
    steps = (999_998, 999_999, 1_000_000, 1_000_001)
    for step in steps:
        (tmp_path / step_dir_name(step)).mkdir()
        (tmp_path / step_dir_name(step) / STATE_FILE).write_bytes(b"")
    (tmp_path / "step1000002").mkdir()  # no train_state.pt: a checkpoint whose write never finished
    assert [p.name for p in complete_checkpoints(tmp_path)] == [step_dir_name(s) for s in steps]
    assert latest_checkpoint(tmp_path).name == "step1000001"  # no `latest` file: the fallback
    Checkpointer(tmp_path, keep_last=2)._prune(keep=tmp_path / "step1000001")
    assert sorted(p.name for p in tmp_path.glob("step*")) == ["step1000000", "step1000001", "step1000002"]
    model = OLMo2(ModelConfig(**SMALL))
    Checkpointer(tmp_path, keep_last=2).save(1_000_003, model, torch.optim.AdamW(model.parameters()), {}, {},
                                             background=False)
    assert sorted(p.name for p in complete_checkpoints(tmp_path)) == ["step1000001", "step1000003"]


def test_a_kill_while_pruning_leaves_no_step_that_looks_complete(tmp_path, monkeypatch):
    """Pruning deleted a step dir in place: a kill part way left one with its train_state.pt but
    files gone, which complete_checkpoints (and so resume_advice) listed (found by a reviewer)."""
    model = OLMo2(ModelConfig(**SMALL))
    opt = torch.optim.AdamW(model.parameters())
    ck = Checkpointer(tmp_path, keep_last=1)
    ck.save(1, model, opt, {}, {}, background=False)

    class Killed(BaseException):
        pass

    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):  # killed as train_state.pt, the completion marker, was to go
        if Path(path).name == STATE_FILE:
            raise Killed
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(Killed):
        ck.save(2, model, opt, {}, {}, background=False)
    monkeypatch.undo()
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step000002"]
    half = f".step000001.tmp{os.getpid()}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [half, "latest", "step000002"]
    assert Checkpointer(tmp_path).sweep() == [f"removed {half}"]  # the next start
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step000002"]


@pytest.mark.parametrize("keep_last", [0, -1])
def test_keep_last_below_one_is_refused(keep_last):
    """0 kept every checkpoint (it read as "no limit") and -1 deleted the oldest at each save."""
    with pytest.raises(ValueError, match=f"keep_last must be >= 1 or None .*got {keep_last}"):
        Checkpointer("unused", keep_last=keep_last)


def test_soup_averages_exactly(tmp_path):
    cfg = ModelConfig(**SMALL)
    models = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        m = OLMo2(cfg)
        Checkpointer(tmp_path / f"run{seed}").save(10, m, torch.optim.AdamW(m.parameters()), {},
                                                   {"model": cfg.to_dict()}, background=False)
        models.append(m.state_dict())
    assert soup_main([str(tmp_path / "soup"), *(str(tmp_path / f"run{s}") for s in (1, 2, 3))]) == 0
    averaged, config = load_model_weights(tmp_path / "soup")
    for key, value in averaged.items():
        expected = ((models[0][key].double() + models[1][key].double() + models[2][key].double()) / 3).float()
        assert torch.equal(value, expected), key
    assert len(config["soup"]) == 3
    # a soup of identical checkpoints is the checkpoint itself
    same = average_state_dicts([models[0], models[0]])
    assert all(torch.equal(same[k], models[0][k]) for k in same)


def test_soup_rejects_mismatched_checkpoints(tmp_path, capsys):
    for name, d in (("a", 32), ("b", 64)):
        cfg = ModelConfig(**{**SMALL, "d_model": d})
        m = OLMo2(cfg)
        Checkpointer(tmp_path / name).save(1, m, torch.optim.AdamW(m.parameters()), {}, {"model": cfg.to_dict()},
                                           background=False)
    assert soup_main([str(tmp_path / "out"), str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "different model configs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least two"):
        soup(tmp_path / "out", [tmp_path / "a"])
    with pytest.raises(ValueError, match="different tensors"):
        average_state_dicts([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])
    with pytest.raises(FileNotFoundError):
        soup(tmp_path / "out", [tmp_path / "a", tmp_path / "missing"])


def test_resume_refuses_other_model_and_weights_only_dirs(tmp_path):
    data = make_data(tmp_path / "data")
    Trainer(make_run(data, max_steps=2), CPU, tmp_path / "run", log=quiet).fit()
    other = make_run(data)
    other.model = ModelConfig(**{**SMALL, "n_layers": 3})
    # The message names what differs (it blamed --model where --seq-len had raised max_seq_len).
    with pytest.raises(ValueError, match=r"different model config \(n_layers 2 there, 3 here\); resume with the "
                                         r"settings it was trained with \(the same --model, --init-from and "
                                         r"--seq-len\)"):
        Trainer(other, CPU, tmp_path / "x", resume=tmp_path / "run", log=quiet)
    import shutil

    shutil.copytree(tmp_path / "run", tmp_path / "run-copy")  # a soup takes each checkpoint once
    soup(tmp_path / "soup", [tmp_path / "run", tmp_path / "run-copy"])
    with pytest.raises(FileNotFoundError, match="weights only"):
        Trainer(make_run(data), CPU, tmp_path / "y", resume=tmp_path / "soup", log=quiet)


def test_resuming_with_another_seq_len_names_the_checkpoint_and_the_values(tmp_path):
    """"saved for different data (files, sizes or seq_len changed)" said neither which checkpoint
    nor what changed (found by a tester)."""
    from trainer.data import DataError

    data = make_data(tmp_path / "data")
    Trainer(make_run(data, max_steps=2), CPU, tmp_path / "run", log=quiet).fit()
    with pytest.raises(DataError, match=re.escape(f"the data position in {tmp_path / 'run' / 'step000002' / STATE_FILE}"
                                                  f" was saved for different data (seq_len 32 there, 16 here); ")):
        Trainer(make_run(data, seq_len=16), CPU, tmp_path / "run", resume=tmp_path / "run", log=quiet)


@pytest.mark.parametrize("damaged", [MODEL_FILE, OPTIM_FILE, STATE_FILE, "config.json"])
def test_a_truncated_checkpoint_file_is_named_when_resuming(tmp_path, capsys, damaged):
    """A checkpoint cut short by a copy or a full disk: torch's error names no file and --resume
    ended in a traceback. The message names the file and the checkpoint before it, to resume instead."""
    from trainer.run import main

    data = make_data(tmp_path / "data")
    common = ["--data", str(data), "--model", "tiny", "--seq-len", "32", "--batch-size", "2", "--device", "cpu",
              "--save-dir", str(tmp_path / "run"), "--save-interval", "1"]
    assert main([*common, "--steps", "2"]) == 0
    file = tmp_path / "run" / "step000002" / damaged
    file.write_bytes(file.read_bytes()[:file.stat().st_size // 2])
    capsys.readouterr()
    assert main([*common, "--steps", "3", "--resume"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"trainer.run: error: {file} cannot be read ("), lines
    earlier = tmp_path / "run" / "step000001"
    assert lines[0].endswith(f"Copy it again, or resume the one before it (--resume {earlier})"), lines
    if damaged == MODEL_FILE:  # what soups and exports of this trainer's checkpoints read
        with pytest.raises(CheckpointFormatError, match=f"^{re.escape(str(file))} cannot be read .*truncated"):
            load_model_weights(tmp_path / "run")


def test_a_missing_checkpoint_file_is_named_when_resuming(tmp_path, capsys):
    """A file gone from the newest checkpoint (a partial copy): config.json was a FileNotFoundError
    traceback, model.pt / optim.pt a bare "[Errno 2] No such file or directory", and one without
    train_state.pt was passed over for the one before it, silently (rc 0, its metrics rows after
    that step dropped). Checkpoints are renamed into place whole, so such a step is damage, never
    a save cut short: refused before anything is built, naming the file and the one to resume instead."""
    import shutil

    from trainer.run import main

    data = make_data(tmp_path / "data")
    whole = tmp_path / "whole"

    def args(save_dir: Path, steps: int, *extra: str) -> list[str]:
        return ["--data", str(data), "--model", "tiny", "--seq-len", "32", "--batch-size", "2", "--device", "cpu",
                "--save-dir", str(save_dir), "--save-interval", "1", "--steps", str(steps), *extra]

    assert main(args(whole, 2)) == 0
    for missing in (MODEL_FILE, OPTIM_FILE, "config.json", STATE_FILE):
        run = tmp_path / missing
        shutil.copytree(whole, run)
        (run / "step000002" / missing).unlink()
        capsys.readouterr()
        assert main(args(run, 3, "--resume")) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        advice = f"was it left out, e.g. by an interrupted copy? Copy it again, or resume the one before it " \
                 f"(--resume {run / 'step000001'})"
        if missing == STATE_FILE:
            assert lines == [f"trainer.run: error: {run / 'step000002'}, the newest checkpoint ({run / 'latest'} "
                             f"names it), has no {STATE_FILE}; {advice}"]
            assert "model " not in captured.out  # refused in the start-up checks
            assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # nothing resumed, nothing dropped
        else:
            assert lines == [f"trainer.run: error: {run / 'step000002' / missing} cannot be read (no such file); "
                             f"{advice}"]
        # the step named with --resume: it said "holds weights only (e.g. a soup)", once the model was built
        assert main(args(run, 3, "--resume", str(run / "step000002"))) == 2
        captured = capsys.readouterr()
        assert captured.err.strip().splitlines() == [f"trainer.run: error: {run / 'step000002' / missing} cannot be "
                                                     f"read (no such file); {advice}"], captured.err
        assert "model " not in captured.out  # refused in the start-up checks
    # --overwrite still starts afresh over it; and where it is the only checkpoint, the message says what is missing
    run = tmp_path / STATE_FILE
    shutil.rmtree(run / "step000001")
    capsys.readouterr()
    assert main(args(run, 3, "--resume")) == 2
    assert capsys.readouterr().err.strip().endswith(f"has no {STATE_FILE}; was it left out, e.g. by an interrupted "
                                                    f"copy? Copy it again, or start afresh")
    shutil.copytree(run, tmp_path / "overwritten")
    assert main(args(tmp_path / "overwritten", 1, "--overwrite")) == 0
    (run / "latest").unlink()
    assert main(args(run, 3, "--resume")) == 2
    assert capsys.readouterr().err.strip() == (f"trainer.run: error: no checkpoint at {run}: no step*/ directory in "
                                               f"it has a {STATE_FILE} (the newest, step000002, holds config.json, "
                                               f"model.pt, optim.pt)")


def _drop_q_proj(state):
    del state["blocks.0.attn.q_proj.weight"]


def _cut_norm(state):
    state["norm.weight"] = state["norm.weight"][:3].clone()


def _drop_one_moment(state):
    del state["state"]["blocks.0.attn.q_proj.weight"]


def _drop_all_moments(state):
    state["state"] = {}


def _drop_second_moment(state):
    del state["state"]["norm.weight"]["exp_avg_sq"]


@pytest.mark.parametrize("file, edit, said", [
    (MODEL_FILE, _drop_q_proj, "holds 1 tensor(s) unlike the model's (no blocks.0.attn.q_proj.weight)"),
    (MODEL_FILE, _cut_norm, "holds 1 tensor(s) unlike the model's (norm.weight of shape [3], the model's [64])"),
    (OPTIM_FILE, _drop_one_moment, "has no whole optimizer state for 1 of the model's 25 parameters "
                                   "(blocks.0.attn.q_proj.weight), which would start again from zero moments"),
    (OPTIM_FILE, _drop_all_moments, "has no whole optimizer state for 25 of the model's 25 parameters (embed.weight, "
                                    "blocks.0.attn.q_proj.weight, blocks.0.attn.k_proj.weight, ...)"),
    (OPTIM_FILE, _drop_second_moment, "has no whole optimizer state for 1 of the model's 25 parameters (norm.weight)"),
    (STATE_FILE, lambda state: state.pop("data"), "lacks the data loader's position ('data'), which a resume goes on "
                                                  "from"),
    (STATE_FILE, lambda state: state["data"].pop("cursor"), "lacks the data loader's position ('data.cursor')"),
    (STATE_FILE, lambda state: state.pop("spikes"), "lacks the spike trackers' states ('spikes')"),
    (STATE_FILE, lambda state: state.pop("rng"), "lacks the random generators' states ('rng')"),
], ids=["model-tensor", "model-shape", "optim-one", "optim-all", "optim-moment", "data", "data-cursor", "spikes",
        "rng"])
def test_a_checkpoint_lacking_a_tensor_or_state_is_refused_when_resuming(tmp_path, capsys, file, edit, said):
    """A checkpoint file that loads but lacks part of what it held (written by other code, or edited
    with torch.load / torch.save): torch's full-state-dict loader left a tensor missing from model.pt
    at its random initialisation, and parameters missing from optim.pt with fresh AdamW moments, and
    the resume trained on with exit 0; a train_state.pt without its data position or spike trackers
    ended in a KeyError traceback, an optim.pt without one parameter's state in torch's RuntimeError.
    Each is one line naming the file, what it lacks and the checkpoint before it, and nothing trains."""
    from trainer.run import main

    data = make_data(tmp_path / "data")
    run = tmp_path / "run"
    common = ["--data", str(data), "--model", "tiny", "--seq-len", "32", "--batch-size", "2", "--device", "cpu",
              "--save-dir", str(run), "--save-interval", "1"]
    assert main([*common, "--steps", "2"]) == 0
    path = run / "step000002" / file
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    capsys.readouterr()
    assert main([*common, "--steps", "3", "--resume"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"trainer.run: error: {path} {said}{captured.err.split(said)[1].rstrip()}"]
    assert captured.err.rstrip().endswith(f"Copy it again, or resume the one before it (--resume {run / 'step000001'})")
    assert not (run / "step000003").exists() and "step 3/3" not in captured.out


def test_a_save_dir_in_use_by_a_live_run_is_refused(tmp_path, capsys):
    """Two runs started on one --save-dir at once both found it empty and both trained with exit 0: one
    metrics.jsonl of interleaved rows (steps 1-5, 1-5, 6-10, ...) and checkpoints of either run. The
    run holds a lock on --save-dir (the kernel drops it when its process ends, a kill too); a second
    run is refused in one line naming the holder, --overwrite removing nothing of the live run's."""
    from trainer.checkpoint import LOCK_FILE, hold_save_dir, release_save_dir
    from trainer.run import main

    data = make_data(tmp_path / "data")
    run = tmp_path / "run"
    common = ["--data", str(data), "--model", "tiny", "--seq-len", "32", "--batch-size", "2", "--device", "cpu",
              "--save-dir", str(run), "--steps", "1"]
    assert main(common) == 0
    other = hold_save_dir(run)  # another run's process, training there now
    try:
        for extra in (["--resume"], ["--overwrite"]):
            capsys.readouterr()
            assert main([*common, "--steps", "2", *extra]) == 2
            err = capsys.readouterr().err
            assert err.splitlines() == [f"trainer.run: error: --save-dir {run} is in use by another run (pid "
                                        f"{os.getpid()} on {err.split(' on ', 1)[1].split(',')[0]}, since "
                                        f"{err.split('since ')[1].split(')')[0]}): two runs there would interleave "
                                        "metrics.jsonl and replace each other's checkpoints; wait for it to end, or "
                                        "use another --save-dir"], err
            assert latest_checkpoint(run) == run / "step000001"
            assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    finally:
        release_save_dir(other, run)
    assert main([*common, "--steps", "2", "--resume"]) == 0  # the other run has ended
    assert latest_checkpoint(run) == run / "step000002"
    assert not (run / LOCK_FILE).exists()  # a run leaves only what it wrote


def test_a_save_dir_removed_while_training_is_said_and_made_again(tmp_path):
    """--save-dir removed during a run (rm -rf, a cleanup job) was made again unsaid at the next
    metrics flush: exit 0, and a metrics.jsonl and checkpoints that began part way through the run.
    The run says so in one line and goes on: its weights are whole in memory, and its checkpoints
    from then on are saved there."""
    import shutil

    data = make_data(tmp_path / "data")
    save_dir = tmp_path / "run"
    messages = []

    def log(message):
        messages.append(message)
        if message.startswith("step 4/6"):  # after the step-2 checkpoint and rows were written
            shutil.rmtree(save_dir)

    Trainer(make_run(data, save_interval=2), CPU, save_dir, log=log).fit()
    assert [m for m in messages if m.startswith("warning")] == [
        f"warning: --save-dir {save_dir} was removed while this run trained (at step 4), with the checkpoints and "
        "metrics.jsonl rows written so far; made again: what this run writes from here on goes there"]
    assert [json.loads(line)["step"] for line in (save_dir / "metrics.jsonl").read_text().splitlines()] == [3, 4, 5, 6]
    assert [p.name for p in complete_checkpoints(save_dir)] == ["step000004", "step000006"]


def test_a_full_disk_writing_metrics_names_the_file_and_the_checkpoint_to_resume(tmp_path, capsys, monkeypatch):
    """A disk that filled between checkpoints failed the next metrics.jsonl write: the run said
    "trainer.run: error: [Errno 28] No space left on device", naming neither the file nor where to
    go on from. It names both, the save in flight at the failure finished first."""
    import builtins

    import trainer.train
    from trainer.run import main

    data = make_data(tmp_path / "data")
    run = tmp_path / "run"

    rows = []

    def full_after_step_2(file, *args, **kwargs):  # --metrics-interval 1: one open a step
        if Path(file).name == "metrics.jsonl":
            rows.append(file)
            if len(rows) > 2:  # step 3, the step-2 checkpoint perhaps still being written
                raise OSError(28, "No space left on device")
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(trainer.train, "open", full_after_step_2, raising=False)
    assert main(["--data", str(data), "--model", "tiny", "--seq-len", "32", "--batch-size", "2", "--device", "cpu",
                 "--save-dir", str(run), "--steps", "4", "--save-interval", "2", "--metrics-interval", "1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"trainer.run: error: writing {run / 'metrics.jsonl'} failed: No space left on device; the last checkpoint is "
        f"{run / 'step000002'}: rerun with --resume to continue from it"]


def test_a_failed_background_write_stops_the_run_at_the_next_step(tmp_path, monkeypatch):
    """A save that failed in its thread (a full disk) was raised only when the next save waited for
    it, a whole --save-interval later: steps trained with no checkpoint behind them. The loop now
    asks every step; here the write is made to finish at once, so the error comes at step 3."""
    import trainer.checkpoint as checkpoint

    def full_disk(self, final, *args):
        raise OSError(28, "No space left on device")

    real_save = Checkpointer.save

    def save_and_let_it_finish(self, *args, **kwargs):
        final = real_save(self, *args, **kwargs)
        if self._thread is not None:
            self._thread.join()  # the write is over; its error is not raised until someone asks
        return final

    monkeypatch.setattr(checkpoint.Checkpointer, "_write", full_disk)
    monkeypatch.setattr(checkpoint.Checkpointer, "save", save_and_let_it_finish)
    run = Trainer(make_run(make_data(tmp_path / "data"), save_interval=2, max_steps=6), CPU, tmp_path / "run",
                  log=quiet)
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        run.fit()
    assert run.step == 3


def test_the_resume_line_counts_epochs_as_the_epochs_note_does(tmp_path):
    """The resume line printed the loader's 0-based epoch ("epoch 0, instance cursor 16") beside trainer.run's
    note counting from 1 ("from epoch 1's instance 16 on"), and a checkpoint that ends an epoch as a cursor at its
    end, where its next step starts the next epoch (a reviewer). 16 instances, batch 4: an epoch is 4 steps."""
    from trainer.run import epochs_note

    data = make_data(tmp_path / "data", n_tokens=16 * 32)
    Trainer(make_run(data, max_steps=4, save_interval=2), CPU, tmp_path / "run", log=quiet).fit()
    for step, said in ((2, "step 3 draws from epoch 1's instance 8 on, of 16"),
                       (4, "epoch 1 done: step 5 starts epoch 2")):
        messages = []
        resumed = Trainer(make_run(data, max_steps=6), CPU, tmp_path / f"more{step}",
                          resume=tmp_path / "run" / f"step{step:06d}", log=messages.append)
        assert f"resumed from {tmp_path / 'run' / f'step{step:06d}'} at step {step} ({said})" in messages
        loader = resumed.loader
        note = epochs_note(16, 4, 6, resumed.dataset, step, loader.epoch, loader.cursor)
        assert note.startswith("note: steps 3-6 take 16 instances from epoch 1's instance 8 on" if step == 2 else
                               "note: steps 5-6 take 8 instances from epoch 2;")
        assert "(2 epochs in all)" in note  # as the uninterrupted run's note counts them
        assert resumed.fit().history[0]["step"] == step + 1
    assert "(2 epochs in all)" in epochs_note(16, 4, 6, resumed.dataset)
