"""What `torchrun --nproc_per_node 2 -m trainer.run` says: each start-up message once, by rank 0.

Every rank runs the same command line on the same files, so an error found alike on every rank
(a usage error, an unreadable --mix, a --resume of other data) was printed once per rank. These
launch torchrun with 2 gloo ranks on the CPU and count the message in the combined output."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from test_trainer_cli import TINY, run_cli
from trainer_memmaps import write_real_text_mix


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A tiny built mix of real text: 2 parts of >= 40 instances of 32 tokens."""
    return write_real_text_mix(tmp_path_factory.mktemp("mix"), n_parts=2, tokens_per_part=40 * 32)


def torchrun_2(*args):
    """trainer.run under torchrun with 2 ranks; (the completed process, stdout + stderr)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this interpreter")
    proc = run_cli(*args, launcher=[torchrun, "--standalone", "--nproc_per_node", "2", "-m"])
    return proc, proc.stdout + proc.stderr


def root_cause_is_rank_0(output: str) -> bool:
    root = output.split("Root Cause", 1)[-1]
    return re.search(r"rank\s*: 0 \(local_rank: 0\)\s+exitcode\s*: 2 ", root) is not None


@pytest.mark.slow
@pytest.mark.parametrize("flags, said", [
    (["--steps", "abc"], "error: argument --steps: invalid int value: 'abc'"),
    ([], "error: one of the arguments --mix --data is required"),
])
def test_a_usage_error_is_said_once_under_torchrun(data_dir, flags, said):
    """Both ranks printed argparse's usage and error (found by a tester)."""
    data = [] if not flags else ["--data", data_dir]
    proc, output = torchrun_2(*data, "--model", "tiny", "--device", "cpu", *flags)
    assert proc.returncode != 0
    assert output.count(said) == 1 and output.count("usage: ") == 1, output[-3000:]
    assert root_cause_is_rank_0(output), output[-2000:]


@pytest.mark.slow
def test_help_is_printed_once_under_torchrun():
    proc, output = torchrun_2("--help")
    assert proc.returncode == 0, output[-2000:]
    assert output.count("usage: ") == 1 and output.count("--micro-batch-size") == 2, output[:500]  # usage + option


@pytest.mark.slow
def test_an_unreadable_mix_is_said_once_under_torchrun(tmp_path):
    """Errors found before the process group exists: every rank printed its copy."""
    manifest = tmp_path / "mix.json"
    manifest.write_text("{not json")
    proc, output = torchrun_2("--mix", manifest, "--model", "tiny", "--device", "cpu")
    assert proc.returncode != 0
    assert output.count(f"trainer.run: error: manifest {manifest} is not valid JSON") == 1, output[-3000:]
    assert root_cause_is_rank_0(output), output[-2000:]


@pytest.mark.slow
def test_a_resume_of_other_data_is_said_once_under_torchrun(data_dir, tmp_path):
    """The data fingerprint was checked in the Trainer, after the agreed start-up checks: each rank
    printed "was saved for different data" (found by a tester). It is a start-up check now."""
    from trainer.run import main

    save = tmp_path / "run"
    assert main(["--data", str(data_dir), *map(str, TINY), "--steps", "1", "--save-dir", str(save)]) == 0
    proc, output = torchrun_2("--data", data_dir / "part-00000.npy", *TINY, "--steps", 2, "--save-dir", save,
                              "--resume")
    assert proc.returncode != 0
    said = (f"trainer.run: error: the data position in {save / 'step000001' / 'train_state.pt'} was saved for "
            "different data (2 token file(s) there, 1 here); resuming would not replay the same batches")
    assert output.count(said) == 1 and output.count("error:") == 1, output[-3000:]
    assert root_cause_is_rank_0(output), output[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("damaged", ["model.pt", "optim.pt"])
def test_a_damaged_resume_checkpoint_is_said_once_under_torchrun(data_dir, tmp_path, damaged):
    """Each rank loads the --resume checkpoint in the Trainer, after the agreed start-up checks: every rank
    printed the same "model.pt cannot be read" (found by a tester). The ranks agree on the load as on the
    start-up checks: rank 0 says it and exits 2, torchrun's root cause; the weights are read once."""
    from trainer.run import main

    save = tmp_path / "run"
    args = ["--data", data_dir, *TINY, "--save-dir", save]
    assert main(list(map(str, [*args, "--steps", 1]))) == 0
    with open(save / "step000001" / damaged, "r+b") as fh:
        fh.truncate(1000)
    proc, output = torchrun_2(*args, "--steps", 2, "--resume")
    assert proc.returncode != 0
    said = f"trainer.run: error: {save / 'step000001' / damaged} cannot be read"
    assert output.count(said) == 1 and output.count("error:") == 1, output[-3000:]
    assert root_cause_is_rank_0(output), output[-2000:]


@pytest.mark.slow
def test_a_save_dir_holding_a_run_is_said_once_under_torchrun(data_dir, tmp_path):
    """Rank 0 said why; rank 1 printed the same refusal "(see rank 0)"."""
    from trainer.run import main

    save = tmp_path / "run"
    args = ["--data", data_dir, *TINY, "--steps", 1, "--save-dir", save]
    assert main(list(map(str, args))) == 0
    proc, output = torchrun_2(*args)
    assert proc.returncode != 0
    assert output.count(f"trainer.run: error: --save-dir {save} holds a run") == 1, output[-3000:]
    assert output.count("error:") == 1, output[-3000:]
    assert root_cause_is_rank_0(output), output[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("module, prog, args", [
    ("trainer.eval", "trainer.eval", ["--checkpoint", "{ckpt}", "--tasks", "arc_easy", "--limit", "2", "--out",
                                      "{out}"]),
    ("trainer.export_hf", "export_hf", ["{ckpt}", "{out}"]),
    ("trainer.soup", "soup", ["{out}", "{ckpt}", "{ckpt}/step000001"]),
])
def test_a_one_process_command_under_torchrun_is_refused_once(data_dir, tmp_path, module, prog, args):
    """`torchrun --nproc_per_node 2 -m trainer.eval` (or export_hf, soup) ran the whole command on each
    rank: two evaluations on the first GPU, two writes of one output, every line twice (found by a
    tester). The node's first rank says in one line to run it as python -m, and exits 2 before any work."""
    from trainer.run import main

    ckpt, out = tmp_path / "run", tmp_path / "out"
    assert main(["--data", str(data_dir), *map(str, TINY), "--steps", "1", "--save-dir", str(ckpt)]) == 0
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this interpreter")
    proc = run_cli(*[a.format(ckpt=ckpt, out=out) for a in args], module=module,
                   launcher=[torchrun, "--standalone", "--nproc_per_node", "2", "-m"])
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and not out.exists(), output[-3000:]
    said = (f"{prog}: error: it runs in one process and does not share its work between ranks, and torchrun "
            f"started 2: run it as python -m {module}")
    assert output.count(said) == 1 and output.count("error:") == 1, output[-3000:]
    assert root_cause_is_rank_0(output), output[-2000:]


def test_a_one_process_command_runs_where_only_the_environment_holds_a_world_size(monkeypatch, capsys):
    """A job's environment may set WORLD_SIZE for its training step; a later plain `python -m trainer.eval`
    is one process all the same. torchrun's own variable tells its ranks."""
    from trainer.distributed import one_process_refusal

    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert one_process_refusal("soup", "trainer.soup") is None and capsys.readouterr().err == ""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert one_process_refusal("soup", "trainer.soup") == 2
    assert capsys.readouterr().err == ("soup: error: it runs in one process and does not share its work between "
                                       "ranks, and torchrun started 8: run it as python -m trainer.soup\n")


def test_a_rank_that_leaves_an_error_to_rank_0_says_it_if_not_stopped(data_dir, tmp_path, capsys, monkeypatch):
    """A rank other than its node's first says nothing and waits for torchrun to stop it; where
    nothing does (rank 0 did not fail alike), it says its error after all: never lost."""
    from trainer import run

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    waits = []
    monkeypatch.setattr(run, "wait_to_be_stopped", lambda: waits.append(1))
    assert run.main(["--data", str(data_dir), "--model", "tiny", "--eval-limit", "3"]) == 2
    assert capsys.readouterr().err == ("trainer.run: error: --eval-limit limits the evaluation --eval-tasks asks "
                                       "for; give both, or neither\n")
    with pytest.raises(SystemExit) as stop:
        run.main(["--data", str(data_dir), "--bogus"])
    assert stop.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        run.main(["--help"])
    assert stop.value.code == 0 and capsys.readouterr() == ("", "")  # rank 0 prints the help
    assert waits == [1, 1]


def test_a_missing_gpu_is_said_by_the_first_rank_without_one(monkeypatch):
    """On a one-GPU node, ranks 1..N-1 each said "local rank K has no CUDA device"; local rank 1 says it."""
    import torch

    from trainer.distributed import DeviceUnavailable, pick_device
    from trainer.run import speaks_before_group

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "4")
    for rank in (1, 2, 3):
        with pytest.raises(DeviceUnavailable) as exc:
            pick_device("cuda", rank)
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert speaks_before_group(exc.value.said_by) == (rank == 1)
