"""Run length and LR from recipe, mix and checkpoint: `python -m trainer.schedule` and trainer.plan."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from trainer.config import ModelConfig
from trainer.data import DataError
from trainer.plan import anneal_start_lr, data_tokens, pretrain_schedule, steps_for_tokens
from trainer.schedule import main as schedule_main
from trainer.weights import CheckpointInfo

# OLMo-core's src/scripts/train/OLMo2/OLMo2-7B-dolma2anneal.py starts its anneal at this LR: the
# same 5T cosine with the horizon in tokens (1,192,092.95 steps) rather than whole steps.
OLMO_CORE_7B_ANNEAL_LR = 6.135113558011711e-05


def schedule_json(capsys, *argv) -> dict:
    assert schedule_main([str(a) for a in argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_7b_anneal_on_50b_tokens(capsys):
    out = schedule_json(capsys, "--recipe", "olmo2-7b-anneal", "--tokens", "50B")
    assert out["steps"] == 11_921 == math.ceil(50e9 / (1024 * 4096))
    assert out["tokens_per_step"] == 1024 * 4096 and out["warmup_steps"] == 0 and out["horizon_steps"] == 11_921
    # from the stage-1 checkpoint: SPEC's LR (OLMo's official-1124 config), not the cosine's there,
    # which OLMo-core's 7B anneal script uses (found by a tester comparing with SPEC.md)
    assert pretrain_schedule("olmo2-7b").lr_at(928_645) == pytest.approx(OLMO_CORE_7B_ANNEAL_LR, rel=1e-6)
    start = out["lr"]
    assert start == 6.1499e-5 and "step 928,646" in out["lr_source"] and "SPEC.md" in out["lr_source"]
    other = schedule_json(capsys, "--recipe", "olmo2-7b-anneal", "--tokens", "50B", "--init-step", "900000")
    assert other["lr"] == pretrain_schedule("olmo2-7b").lr_at(899_999)  # another step: the cosine at its last
    at = out["lr_at"]
    assert at["first"] == {"step": 1, "lr": pytest.approx(start * 11_920 / 11_921)}  # one step down, as OLMo-core
    assert at["last"] == {"step": 11_921, "lr": 0.0}  # as the run logs it
    assert at["50%"]["step"] == 5961 and at["50%"]["lr"] == pytest.approx(start / 2, rel=1e-3)
    assert out["model"] == "olmo2-7b" and out["parameters"]["total"] == ModelConfig.preset("olmo2-7b").num_params()


def test_13b_anneal_starts_at_the_floor_and_lr_wins(capsys):
    out = schedule_json(capsys, "--recipe", "olmo2-13b-anneal", "--tokens", "100B")
    assert out["steps"] == math.ceil(100e9 / (2048 * 4096)) and out["lr"] == pytest.approx(9e-5)
    assert out["lr_at"]["last"]["lr"] == 0.0
    out = schedule_json(capsys, "--recipe", "olmo2-13b-anneal", "--tokens", "100B", "--lr", "5e-5", "--steps", 10)
    assert out["lr"] == 5e-5 and out["lr_source"] == "--lr" and out["steps"] == 10
    assert out["lr_at"]["last"] == {"step": 10, "lr": 0.0}


def test_pretraining_recipe_shows_warmup_and_truncation(capsys):
    out = schedule_json(capsys, "--recipe", "olmo2-7b", "--tokens", "4T")
    assert out["horizon_steps"] == math.ceil(5e12 / (1024 * 4096)) and out["steps"] == math.ceil(4e12 / 4194304)
    assert out["lr_at"]["warmup_end"] == {"step": 2000, "lr": 3e-4}
    assert out["lr_at"]["first"]["lr"] == pytest.approx(3e-4 / 2000)
    assert 3e-5 < out["lr_at"]["last"]["lr"] < 1e-4  # truncated cosine: above the floor


def write_mix(directory: Path, sizes: list[int], report_tokens: int | None) -> Path:
    directory.mkdir(parents=True)
    for i, n in enumerate(sizes):
        np.zeros(n, dtype="<u4").tofile(directory / f"part-{i:05d}.npy")
    if report_tokens is not None:
        (directory / "report.json").write_text(json.dumps({"output": {"tokens": report_tokens, "docs": 3}}))
    return directory


def test_steps_come_from_the_built_mix(tmp_path, capsys):
    mix = write_mix(tmp_path / "mix", [5000, 3000], 8000)
    assert data_tokens([str(mix)]) == (8000, str(mix / "report.json"))
    out = schedule_json(capsys, "--recipe", "olmo2-7b-anneal", "--mix", mix, "--seq-len", 64, "--batch-size", 8)
    assert out["tokens"] == 8000 and out["steps"] == math.ceil(8000 / 512) == 16
    assert out["lr_at"]["last"] == {"step": 16, "lr": 0.0}
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"name": "m", "output": "mix"}))
    assert schedule_json(capsys, "--recipe", "olmo2-7b-anneal", "--mix", manifest, "--seq-len", 64,
                         "--batch-size", 8)["steps"] == 16
    # Not built yet: the manifest's budget plans the schedule (the --help example needed a built mix)
    unbuilt = tmp_path / "unbuilt.json"
    unbuilt.write_text(json.dumps({"name": "u", "version": 1, "seed": 1, "budget": "10K", "output": "nowhere",
                                   "sources": [{"name": "a", "paths": ["a/*.jsonl"], "mix_percent": 100}]}))
    out = schedule_json(capsys, "--recipe", "olmo2-7b-anneal", "--mix", unbuilt, "--seq-len", 64, "--batch-size", 8)
    assert (out["tokens"], out["steps"]) == (10_000, math.ceil(10_000 / 512))
    assert out["tokens_source"] == "unbuilt.json's budget, not built yet"
    stale = write_mix(tmp_path / "stale", [5000], 8000)
    with pytest.raises(DataError, match="says the mix holds 8,000 tokens but its token files hold 5,000"):
        data_tokens([str(stale)])
    assert data_tokens([str(stale / "part-00000.npy")]) == (5000, "1 token file(s)")
    assert steps_for_tokens(1, 4096) == 1


def test_every_build_among_the_data_is_checked(tmp_path):
    """Found by a tester: only a lone --data directory was held to its report.json; a partial copy
    beside another build, or below a parent directory given as --data, trained silently, and so did
    an interrupted build below a parent; builds of different tokenizers trained together."""
    good = write_mix(tmp_path / "p" / "good", [4000], 4000)
    partial = write_mix(tmp_path / "partial", [5000], 8000)
    for given in ([str(good), str(partial)], [str(tmp_path)]):
        with pytest.raises(DataError, match=f"{partial}/report.json says the mix holds 8,000 tokens"):
            data_tokens(given)
    (partial / "report.json").unlink()
    (partial / "_plan.json").write_text("{}")  # killed before its report
    with pytest.raises(DataError, match=f"{partial} is an incomplete dolmino build"):
        data_tokens([str(tmp_path)])
    shutil.rmtree(partial)
    other = write_mix(tmp_path / "other", [1000], 1000)
    assert data_tokens([str(tmp_path)]) == (5000, "2 token file(s), 2 checked against their report.json")
    for mix, name, vocab, eos in ((good, "allenai/dolma2-tokenizer", 100278, 100257), (other, "wordpiece", 1000, 3)):
        report = json.loads((mix / "report.json").read_text())
        (mix / "report.json").write_text(json.dumps({**report, "tokenizer": name, "vocab_size": vocab,
                                                     "eos_token_id": eos}))
    with pytest.raises(DataError, match="the data mixes builds of different tokenizers: .*allenai/dolma2-tokenizer, "
                                        "EOS 100257\\) and .*wordpiece, EOS 3\\)"):
        data_tokens([str(good), str(other)])
    assert data_tokens([str(good)]) == (4000, str(good / "report.json"))
    # Found by a reviewer: one tokenizer declared padded in one manifest is the same tokenizer; two
    # tokenizer.json files under one name are not (where the reports record their digests).
    def retokenize(mix, **fields):
        report = json.loads((mix / "report.json").read_text())
        (mix / "report.json").write_text(json.dumps({**report, **fields}))

    retokenize(other, tokenizer="allenai/dolma2-tokenizer", vocab_size=100352, eos_token_id=100257)
    assert data_tokens([str(good), str(other)])[0] == 5000
    retokenize(good, tokenizer_sha256="a" * 64)
    assert data_tokens([str(good), str(other)])[0] == 5000  # one report without a digest: names decide
    retokenize(other, tokenizer_sha256="b" * 64)
    with pytest.raises(DataError, match="tokenizer.json aaaaaaaaaaaa.*tokenizer.json bbbbbbbbbbbb"):
        data_tokens([str(good), str(other)])
    retokenize(other, tokenizer_sha256="a" * 64)
    # the same files through overlapping --data paths: said so, not blamed on an incomplete copy
    for given in ([str(good), str(good)], [str(tmp_path / "p"), str(good)]):
        with pytest.raises(DataError, match="is given twice.*the --data paths overlap"):
            data_tokens(given)
    # Found by a reviewer: a build linked into a --data directory was left out (rglob does not enter
    # directory links); a hard-linked copy trained twice; a report was named for tokens it does not count
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(other, linked / "other")
    loose = tmp_path / "loose"
    loose.mkdir()
    np.zeros(700, dtype="<u4").tofile(loose / "shard.npy")
    assert data_tokens([str(good), str(linked), str(loose)]) == (5700, "3 token file(s), 2 checked against their "
                                                                        "report.json")
    os.link(good / "part-00000.npy", loose / "again.npy")
    with pytest.raises(DataError, match="again.npy is given twice .also as .*good/part-00000.npy"):
        data_tokens([str(good), str(loose)])
    (loose / "again.npy").unlink()
    # a build with another build inside it: its report.json counts only its own parts
    inner = write_mix(good / "ablation", [300], 300)
    with pytest.raises(DataError, match=f"{good} is a build with another build inside it \\({inner}\\)"):
        data_tokens([str(good)])


def test_anneal_start_lr_sources():
    seven = ModelConfig.preset("olmo2-7b")
    lr, source = anneal_start_lr("olmo2-7b-anneal", seven)
    assert lr == 6.1499e-5 and "OLMo 2's stage-1 end" in source
    released = CheckpointInfo(path=Path("x"), format="hf", shapes={}, model=seven, step=928_646,
                              step_source="revision stage1-step928646-tokens3896B")
    assert anneal_start_lr("olmo2-7b-anneal", seven, released)[0] == 6.1499e-5  # the released checkpoint
    revision = CheckpointInfo(path=Path("x"), format="hf", shapes={}, model=seven, step=500_000,
                              step_source="revision stage1-step500000-tokens2098B")
    lr, source = anneal_start_lr("olmo2-7b-anneal", seven, revision)
    assert lr == pretrain_schedule("olmo2-7b").lr_at(499_999) and "stage1-step500000" in source
    lr, _ = anneal_start_lr("microanneal", seven, revision)  # shape -> the olmo2-7b cosine
    assert lr == pretrain_schedule("olmo2-7b").lr_at(499_999)
    unknown = CheckpointInfo(path=Path("x"), format="hf", shapes={}, model=ModelConfig.preset("olmo2-30M"))
    with pytest.raises(ValueError, match="pass --lr"):
        anneal_start_lr("microanneal", unknown.model, unknown)
    annealed = CheckpointInfo(path=Path("x"), format="trainer", shapes={}, model=seven, step=10,
                              train={"schedule": "linear_to_zero", "warmup_steps": 0})
    with pytest.raises(ValueError, match="itself trained with a linear_to_zero schedule"):
        anneal_start_lr("olmo2-7b-anneal", seven, annealed)


def test_an_anneal_from_a_mid_training_revision_needs_its_lr(capsys):
    """A stage-2 revision's step is its anneal's: the LR was the pretraining cosine's at that step,
    3.0e-4 from OLMo-2-1124-7B stage2-ingredient1-step11931-tokens50B (found by a tester)."""
    seven = ModelConfig.preset("olmo2-7b")
    stage2 = CheckpointInfo(path=Path("x"), format="hf", shapes={}, model=seven, step=11_931, stage=2,
                            step_source="revision stage2-ingredient1-step11931-tokens50B")
    with pytest.raises(ValueError, match=r"at step 11,931 \(revision stage2-ingredient1-step11931-tokens50B\) is a "
                                         r"mid-training \(stage 2\) checkpoint: its step counts the anneal's steps, "
                                         r"not pretraining's, .*; pass --lr"):
        anneal_start_lr("olmo2-7b-anneal", seven, stage2)
    assert schedule_main(["--recipe", "olmo2-7b-anneal", "--tokens", "50B", "--init-step",
                          "stage2-ingredient1-step11931-tokens50B"]) == 2
    err = capsys.readouterr().err
    assert "is a mid-training (stage 2) revision" in err and len(err.strip().splitlines()) == 1, err


def test_schedule_cli_errors_are_clear(capsys):
    assert schedule_main(["--recipe", "olmo2-7b-anneal"]) == 2
    assert "pass --steps, or data" in capsys.readouterr().err
    assert schedule_main(["--recipe", "olmo2-7b-anneal", "--tokens", "1B", "--init-step", "latest"]) == 2
    assert "neither a step number nor a revision name" in capsys.readouterr().err


def test_init_step_without_a_checkpoint_sets_the_start(capsys):
    out = schedule_json(capsys, "--recipe", "olmo2-7b-anneal", "--tokens", "50B", "--init-step",
                        "stage1-step500000-tokens2098B")
    assert out["lr"] == pretrain_schedule("olmo2-7b").lr_at(499_999)
    assert "--init-step stage1-step500000-tokens2098B" in out["lr_source"]


def test_the_7b_recipe_stops_at_4t_on_its_5t_cosine(capsys):
    """SPEC: 7B ran the 5T cosine and was truncated at 4T; the schedule without data showed the
    whole 5T run (found by a tester). --horizon-tokens or --steps given still win."""
    out = schedule_json(capsys, "--recipe", "olmo2-7b")
    assert out["horizon_steps"] == math.ceil(5e12 / (1024 * 4096)) and out["steps"] == math.ceil(4e12 / (1024 * 4096))
    assert out["tokens_source"] == "the olmo2-7b recipe's stop" and out["lr_at"]["last"]["lr"] > 3e-5
    assert schedule_json(capsys, "--recipe", "olmo2-13b")["steps"] == math.ceil(5e12 / (2048 * 4096))
    assert schedule_json(capsys, "--recipe", "olmo2-7b", "--steps", 10)["steps"] == 10


def test_schedule_flags_an_anneal_does_not_follow_are_said(capsys):
    """--final-lr-fraction was ignored by linear_to_zero, and a --horizon-tokens past the run's
    length left the LR at 97% of its start on the last step, both unsaid (found by a tester)."""
    base = ["--recipe", "microanneal", "--lr", "1e-4", "--seq-len", "128", "--batch-size", "4", "--steps", "6"]
    out = schedule_json(capsys, *base)
    assert out["lr_at"]["last"]["lr"] == 0 and capsys.readouterr().err == ""
    assert schedule_main([*base, "--horizon-tokens", "100K", "--final-lr-fraction", "0.5"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["trainer.schedule: warning: --final-lr-fraction 0.5 has no effect: linear_to_zero ends at 0 (the "
                   "fraction is the cosine schedule's floor)",
                   "trainer.schedule: warning: --horizon-tokens 100,000 is past the run's 3,072 tokens: the learning "
                   "rate stops at 97% of its start, not at 0 (leave it out to anneal to 0 at the last step)"]
    assert schedule_main(["--steps", "6", "--final-lr-fraction", "0.5", "--horizon-tokens", "100K"]) == 0
    assert capsys.readouterr().err == ""  # cosine: both mean what they say


def test_an_anneal_from_an_olmo_core_checkpoint_starts_at_the_lr_it_recorded(tmp_path, capsys):
    """The start LR of an OLMo-core checkpoint is the one its optimizer state records for its last step, as
    OLMo-core reads it (olmo_core/script_utils.py `get_lr_from_checkpoint`: "optim.param_groups.
    embeddings.weight.lr" in the flattened state its train module saves, else "optim.param_groups.0.lr").
    It was the OLMo 2 5T cosine at its `stepN`: wrong for OLMo-core's own OLMo2-7B.py (src/scripts/train/
    OLMo2/OLMo2-7B.py: `MAX_DURATION = int(4e12)`, CosWithWarmup over it), and for a checkpoint of an
    anneal, whose step counts the anneal's steps; a shape other than 7B / 13B said "pass --lr" (a tester)."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp
    from test_trainer_import import olmo_core_state, write_olmo_core_checkpoint

    from trainer.model import OLMo2

    tiny = OLMo2(ModelConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=1000, max_seq_len=64))
    unflattened = write_olmo_core_checkpoint(tmp_path / "run", 42, tiny)  # "optim.param_groups.0.lr": 6e-5
    base = ["--recipe", "microanneal", "--tokens", "1M", "--seq-len", "64", "--batch-size", "4"]
    out = schedule_json(capsys, *base, "--init-from", str(unflattened))
    assert out["lr"] == 6e-5 and "records for its last step (its optimizer state" in out["lr_source"]
    # as OLMo-core saves it: flattened, one group per parameter, an LR a tensor where the optimizer compiled it
    flattened = tmp_path / "run" / "step11921" / "model_and_optim"
    groups = {name: {"lr": torch.tensor(2.5e-5), "initial_lr": 6.1e-5} for name in olmo_core_state(tiny)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": olmo_core_state(tiny), "optim": {"param_groups": groups}}, checkpoint_id=str(flattened),
                 no_dist=True)
    out = schedule_json(capsys, *base, "--init-from", str(flattened.parent))
    assert out["lr"] == pytest.approx(2.5e-5) and "at step 11,921 (directory step11921)" in out["lr_source"]
    # --init-step says where the weights are instead: the recorded LR is its own step's, not that one's
    assert schedule_main([*base, "--init-from", str(flattened.parent), "--init-step", "500000"]) == 2
    assert "pass --lr" in capsys.readouterr().err
    seven = ModelConfig.preset("olmo2-7b")
    anneal_end = CheckpointInfo(path=Path("x"), format="olmo-core", shapes={}, model=seven, step=11_921, lr=0.0,
                                step_source="directory step11921")
    with pytest.raises(ValueError, match=r"records a learning rate of 0 for its last step .*; pass --lr"):
        anneal_start_lr("olmo2-7b-anneal", seven, anneal_end)
    four_t = CheckpointInfo(path=Path("x"), format="olmo-core", shapes={}, model=seven, step=500_000, lr=1.55e-4,
                            step_source="directory step500000")
    assert anneal_start_lr("olmo2-7b-anneal", seven, four_t)[0] == 1.55e-4  # not the 5T cosine's 1.99e-4


def test_an_anneal_from_a_soup_of_anneals_needs_its_lr(tmp_path, capsys):
    """A soup (trainer.soup) records no step, but the TrainConfig of its ingredients: a soup of anneals (OLMo 2's
    final models, SPEC.md section 1: "the final model is the average ("soup") of those runs") ended at LR 0, and
    an anneal from it started at OLMo 2's stage-1 LR (6.1499e-5, OLMo's configs/official-1124/
    OLMo2-7B-stage2-seed42.yaml `learning_rate: 0.000061499`) as if it were the stage-1 checkpoint, or, of
    another shape, said the soup "records no schedule" (found by a tester). A single anneal is refused alike."""
    seven = ModelConfig.preset("olmo2-7b")
    anneal = {"schedule": "linear_to_zero", "warmup_steps": 0, "lr": 6.1499e-5, "max_steps": 12_269}
    soup = CheckpointInfo(path=tmp_path / "olmo2-7b-soup", format="trainer", shapes={}, model=seven, train=anneal)
    with pytest.raises(ValueError, match=r"olmo2-7b-soup was itself trained with a linear_to_zero schedule \(an "
                                         r"anneal, or a soup of anneals\?\); pass --lr"):
        anneal_start_lr("olmo2-7b-anneal", seven, soup)
    pretrained = CheckpointInfo(path=tmp_path / "soup", format="trainer", shapes={}, model=seven,
                                train={"schedule": "cosine", "warmup_steps": 2000})
    assert anneal_start_lr("olmo2-7b-anneal", seven, pretrained)[0] == 6.1499e-5  # a soup of stage-1 checkpoints


def test_a_horizon_short_of_an_anneal_says_its_last_steps_train_at_lr_0(capsys):
    """OLMo-core's LinearWithWarmup (olmo_core/optim/scheduler.py) holds the LR at alpha_f x peak (0 for an anneal)
    once the horizon is reached: --horizon-tokens 10K in a 100-step run of 512-token steps left 80 steps at LR 0,
    training nothing, unsaid (found by a tester). Without it, the decay reaches 0 on the last step. The step where
    the decay ends is at 0 itself: 5 steps at 0 of 5 were "its last 4", beside the warning of a run at 0 on every
    step, whose "more --steps" would not have helped (a reviewer): one warning, the horizon's."""
    base = ["--recipe", "microanneal", "--lr", "1e-4", "--seq-len", "128", "--batch-size", "4", "--steps", "100"]
    assert schedule_main([*base, "--horizon-tokens", "10K"]) == 0
    said = capsys.readouterr()
    out = json.loads(said.out)
    assert out["horizon_steps"] == 20 and out["lr_at"]["25%"]["lr"] == 0
    assert said.err.splitlines() == [
        "trainer.schedule: warning: --horizon-tokens 10,000 ends the decay on step 20 of the run's 100: its last 81 "
        "steps (20-100) train at learning rate 0 and change no weight (leave it out to anneal to 0 at the last step)"]
    assert schedule_main([*base, "--horizon-tokens", "51200"]) == 0  # exactly the run: 0 on its last step
    assert capsys.readouterr().err == ""
    assert schedule_main([*base, "--horizon-tokens", "512"]) == 0  # one step: every step at 0
    assert capsys.readouterr().err.splitlines() == [
        "trainer.schedule: warning: the learning rate is 0 on every step this run takes (linear_to_zero, steps "
        "1-100): the weights will not change; its decay reaches 0 on step 1 (counting from 1), the end of its "
        "horizon: lengthen the schedule (a longer --horizon-tokens)"]


def test_a_mix_too_small_for_one_batch_is_refused_as_trainer_run_refuses_it(tmp_path, capsys):
    """`trainer.schedule --recipe microanneal --mix M` on a 527K-token microanneal mix, at the recipe's
    1024 x 4096 tokens a step, printed a 1-step run whose only step trains at LR 0 (exit 0), while
    trainer.run refuses the same data as less than one global batch (found by a tester)."""
    mix = write_mix(tmp_path / "mix", [5000, 3000], 8000)  # 78 + 46 instances of 64 tokens
    argv = ["--recipe", "microanneal", "--lr", "1e-4", "--mix", str(mix), "--seq-len", "64"]
    assert schedule_main([*argv, "--batch-size", "200"]) == 2
    err = capsys.readouterr().err
    assert err == ("trainer.schedule: error: the data holds 124 instances of 64 tokens, fewer than one global batch "
                   "of 200; use more data or a smaller batch\n")
    assert schedule_json(capsys, *argv, "--batch-size", "124")["steps"] == math.ceil(8000 / (124 * 64))


def test_a_schedule_at_lr_0_on_every_step_is_said_as_trainer_run_says_it(capsys):
    """`trainer.schedule --recipe olmo2-7b-anneal --tokens 4M` is one step of 1024 x 4096, which a linear decay
    to 0 takes at LR 0: printed without a word, while trainer.run warned. Both say it now, from one function,
    with the cause: a decay or floor of 0 reached on the schedule's last step, or an LR of 0."""
    from trainer.schedule import LRSchedule

    assert schedule_main(["--recipe", "olmo2-7b-anneal", "--tokens", "4M"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and ("trainer.schedule: warning: the learning rate is 0 on every step this run "
                                          "takes (linear_to_zero, steps 1-1): the weights will not change; its decay "
                                          "reaches 0 on step 1 (counting from 1)") in err
    assert schedule_main(["--steps", "1", "--final-lr-fraction", "0", "--tokens", "1M"]) == 0  # cosine at a 0 floor
    assert "give a --final-lr-fraction above 0" in capsys.readouterr().err
    assert schedule_main(["--steps", "5", "--lr", "0"]) == 0
    assert "(cosine, steps 1-5): its peak (an anneal's start) is 0" in capsys.readouterr().err
    for argv in (["--recipe", "olmo2-7b-anneal", "--tokens", "8M"], ["--steps", "1", "--tokens", "1M"]):
        assert schedule_main(argv) == 0 and "warning" not in capsys.readouterr().err
    # the note holds exactly where every step of the range is at 0 (a warm-up as long as the horizon included)
    for kind, lr, warmup, horizon, floor in [("linear_to_zero", 1e-3, 0, 3, 0.1), ("linear_to_zero", 1e-3, 3, 3, 0.1),
                                             ("cosine", 1e-3, 2, 2, 0.0), ("cosine", 1e-3, 0, 4, 0.1),
                                             ("cosine", 0.0, 1, 4, 0.1)]:
        schedule = LRSchedule(lr, warmup, horizon, kind, floor)
        for start in range(6):
            for stop in range(start + 1, 7):
                zero = all(schedule.lr_at(s) == 0 for s in range(start, stop))
                assert (schedule.zero_lr_note(start, stop) is not None) == zero, (kind, warmup, horizon, start, stop)
