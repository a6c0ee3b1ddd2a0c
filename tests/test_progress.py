"""Progress on the long steps: drawn on a terminal, silent otherwise (tests run without one).

Each long step is run twice, once with stderr replaced by a stream that says it is a
terminal and once as the test runner gives it (not a terminal); the bar must appear in the
first case with the right counts and leave no trace in the second.
"""

from __future__ import annotations

import io
import json
import re
import sys
import time

import pytest
from pyspark import cloudpickle

from dolmino import progress as progress_mod
from dolmino.progress import enabled, progress
from trainer.status import StepStatus

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # executors cannot import test modules


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(progress_mod.ENV_VAR, raising=False)


def test_enabled_follows_the_terminal_and_the_environment(monkeypatch, no_env):
    assert enabled(FakeTTY()) and not enabled(io.StringIO())
    assert not enabled(None) or sys.stderr.isatty()  # pytest's captured stderr is not a terminal
    monkeypatch.setenv("DOLMINO_PROGRESS", "0")
    assert not enabled(FakeTTY())
    monkeypatch.setenv("DOLMINO_PROGRESS", "1")
    assert enabled(io.StringIO())


def test_a_progress_setting_neither_on_nor_off_is_said_once(monkeypatch, capsys):
    """`DOLMINO_PROGRESS=maybe` was taken as unset without a word (found by a tester)."""
    monkeypatch.setattr(progress_mod, "_WARNED", set())
    monkeypatch.setenv("DOLMINO_PROGRESS", "maybe")
    assert enabled(FakeTTY()) and not enabled(io.StringIO())  # ignored: the terminal decides
    assert capsys.readouterr().err == ("warning: DOLMINO_PROGRESS='maybe' is neither 1 nor 0 (true/false, yes/no, "
                                       "on/off): ignored, progress drawn only on a terminal\n")


def test_a_driver_behind_spark_submit_draws_where_its_jvm_writes(monkeypatch, no_env):
    """spark-submit pipes the Python driver's output through its JVM: the README's build command
    never showed a live line on a terminal (found by a tester). The JVM's own streams decide."""
    import os
    import pty
    import subprocess

    leader, follower = pty.openpty()
    on_tty = subprocess.Popen(["sleep", "30"], stdout=follower, stderr=follower)
    # `spark-submit ... > build.log` / `| tee`: the JVM's stdout (the driver's output) is not the terminal
    piped = subprocess.Popen(["sleep", "30"], stdout=subprocess.PIPE, stderr=follower)
    try:
        assert progress_mod.process_on_terminal(on_tty.pid) and not progress_mod.process_on_terminal(piped.pid)
        monkeypatch.setattr(progress_mod.os, "getppid", lambda: on_tty.pid)
        assert not enabled(sys.stderr)  # not under spark-submit
        monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1")
        assert enabled(sys.stderr) and not enabled(io.StringIO())  # a stream of its own is not the JVM's
        monkeypatch.setattr(progress_mod.os, "getppid", lambda: piped.pid)
        assert not enabled(sys.stderr)
    finally:
        for proc in (on_tty, piped):
            proc.kill()
            proc.wait()
        os.close(leader)
        os.close(follower)


def test_bar_drawn_on_a_terminal_and_silent_elsewhere(no_env):
    tty, log = FakeTTY(), io.StringIO()
    assert sum(progress(range(1000), desc="docs", file=tty)) == sum(range(1000))
    assert list(progress(range(1000), desc="docs", file=log)) == list(range(1000))
    assert "docs: 100%" in tty.getvalue() and "1000/1000" in tty.getvalue()
    assert log.getvalue() == ""
    with progress(total=5, file=log) as bar:  # a disabled bar takes updates as no-ops
        bar.update(3)
        bar.set_postfix_str("x")
    assert log.getvalue() == ""
    forced = io.StringIO()
    with progress(total=2, desc="forced", file=forced, enable=True) as bar:
        bar.update(2)
    assert "forced: 100%" in forced.getvalue()


def test_decontamination_index_progress(monkeypatch, capsys, no_env):
    from dolmino.evalsets import EvalInstance
    from filters.decontamination import build_index

    instances = [EvalInstance("taska" if i < 30 else "taskb", "test", f"question number {i} about the eight words here")
                 for i in range(50)]
    build_index(instances, ngram_size=4, progress=True)
    assert capsys.readouterr().err == ""  # not a terminal: nothing at all
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    index = build_index(instances, ngram_size=4, progress=True)
    monkeypatch.undo()
    text = tty.getvalue()
    assert "decontamination index" in text and "50 instances" in text and text.endswith("\n")
    assert sum(sum(v.values()) for v in index.meta["instances"].values()) == 50
    tty2 = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty2)
    build_index(instances, ngram_size=4, progress=False)  # library callers: off unless asked
    monkeypatch.undo()
    assert tty2.getvalue() == ""


def test_default_corpus_assembly_progress(tmp_path, monkeypatch, no_env):
    from dolmino import default_corpus

    def docs(source, n):
        return lambda: (default_corpus._doc(source, f"{source}-{i}", f"text {i}") for i in range(n))

    monkeypatch.setattr(default_corpus, "GENERATORS", {"web": docs("web", 30), "math": docs("math", 12)})
    monkeypatch.setattr(default_corpus, "_posts_xml", lambda: b"<posts>\n</posts>\n")
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    default_corpus.assemble(str(tmp_path / "a"))
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    default_corpus.assemble(str(tmp_path / "b"))
    quiet = sys.stderr.getvalue()
    monkeypatch.undo()
    text = tty.getvalue()
    assert "default corpus: web" in text and "default corpus: math" in text and "42 docs" in text
    assert quiet == ""
    assert default_corpus.is_complete(tmp_path / "a") and default_corpus.is_complete(tmp_path / "b")


def test_synth_partition_progress_files_count_items_and_requests(tmp_path):
    from dolmino.synth.runner import PartitionProgress, read_progress

    class LiveCounts:
        counts = {"requests": 0}

        def live_request_counts(self):
            return dict(self.counts)

    gen = LiveCounts()
    clock = iter(range(100)).__next__  # one "second" per call: every item is written
    tracker = PartitionProgress(str(tmp_path), 3, expected=10, generator=gen, interval=1.0, clock=clock)
    for _ in range(4):
        gen.counts["requests"] += 2
        tracker.item()
    assert read_progress(str(tmp_path)) == {"attempted": 4, "done": 0, "requests": 8}
    PartitionProgress(str(tmp_path), 0, expected=5).write(done=True, cached=True)
    (tmp_path / "00007.json.tmp123").write_text("{half")  # a write in flight is skipped
    assert read_progress(str(tmp_path)) == {"attempted": 4, "done": 1, "requests": 8}
    assert read_progress(str(tmp_path / "absent")) == {"attempted": 0, "done": 0, "requests": 0}


def test_synth_run_shows_items_and_partitions_and_leaves_the_output_unchanged(spark, tmp_path, no_env):
    from dolmino.synth.arithmetic import ArithmeticGenerator
    from dolmino.synth.runner import PROGRESS_DIR, run

    shown = FakeTTY()
    report = run(ArithmeticGenerator(num_docs=200), str(tmp_path / "a"), 4, 3, spark, progress_file=shown)
    text = shown.getvalue()
    assert "synth arithmetic" in text and "200/200" in text and "partitions 4/4" in text
    assert not (tmp_path / "a" / PROGRESS_DIR).exists()
    quiet = io.StringIO()
    again = run(ArithmeticGenerator(num_docs=200), str(tmp_path / "b"), 4, 3, spark, progress_file=quiet)
    assert quiet.getvalue() == ""
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").glob("part-*.jsonl.zst")} == \
        {p.name: p.read_bytes() for p in (tmp_path / "b").glob("part-*.jsonl.zst")}
    assert report["attempted"] == again["attempted"] == 200
    # A rerun finds every partition cached; the bar still reaches the total.
    cached = FakeTTY()
    assert run(ArithmeticGenerator(num_docs=200), str(tmp_path / "a"), 4, 3, spark,
               progress_file=cached)["partitions_generated"] == []
    assert "200/200" in cached.getvalue() and "partitions 4/4" in cached.getvalue()


def test_llm_generator_exposes_live_request_counts(tmp_path):
    from dolmino.documents import write_documents
    from dolmino.synth.llm import MindGenerator

    inputs = tmp_path / "in.jsonl"
    write_documents(str(inputs), [{"id": "1", "text": "2 + 2 = 4"}])
    gen = MindGenerator(endpoint="http://127.0.0.1:9", model="m", num_docs=1, input_path=str(inputs))
    assert gen.live_request_counts() == {}
    client = gen.client(seed=1, partition=0)
    client.counts["requests"] += 3
    assert gen.live_request_counts() == {"requests": 3}
    assert "_live_counts" not in json.dumps(gen.config(), default=str)


# ---------------------------------------------------------------------------- trainer


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_trainer_status_line_eta_and_clear(no_env):
    clock, tty = FakeClock(), FakeTTY()
    status = StepStatus(100, start_step=20, stream=tty, clock=clock)
    assert status.enabled
    clock.now += 10.0
    status.update(40)  # 20 steps in 10 s: 2 steps/s, 60 to go: 30 s
    assert tty.getvalue() == "\rstep 40/100 [00:10<00:30, 2.00 step/s]\x1b[K"
    clock.now += 0.05
    status.update(41)  # redrawn at most every min_interval
    assert tty.getvalue().count("\r") == 1
    status.clear()
    assert tty.getvalue().endswith("\r\x1b[K")
    status.clear()  # nothing shown: nothing to wipe
    assert tty.getvalue().count("\x1b[K") == 2
    clock.now += 3600.0
    status.update(50)  # slow: seconds per step, hours in the ETA
    assert "step 50/100 [1:00:10<" in tty.getvalue() and "s/step]" in tty.getvalue()
    status.update(100)  # the last step is always drawn
    assert "step 100/100" in tty.getvalue()


def test_trainer_status_line_silent_off_a_terminal(monkeypatch, no_env):
    log = io.StringIO()
    status = StepStatus(10, stream=log)
    assert not status.enabled
    status.update(5)
    status.clear()
    assert log.getvalue() == ""
    monkeypatch.setenv("DOLMINO_PROGRESS", "1")
    assert StepStatus(10, stream=log).enabled
    assert not StepStatus(10, stream=FakeTTY(), enabled=False).enabled  # non-main ranks


@pytest.fixture(scope="module")
def tiny_mix(tmp_path_factory):
    from trainer_memmaps import write_real_text_mix

    return write_real_text_mix(tmp_path_factory.mktemp("mix"), n_parts=1, tokens_per_part=24 * 32)


def test_trainer_fit_draws_between_log_lines(tiny_mix, tmp_path, monkeypatch, no_env):
    """A real (tiny) run on a fake terminal: the status line appears, and it is wiped before
    every metrics line so that the log stays clean."""
    import torch

    from trainer.config import ModelConfig, RunConfig, TrainConfig
    from trainer.distributed import DistEnv
    from trainer.train import Trainer
    data = tiny_mix
    train = TrainConfig(seq_len=32, global_batch_size=4, micro_batch_size=2, max_steps=6, warmup_steps=1,
                        metrics_interval=3, gc_interval=2, lr=1e-3)
    run = RunConfig(model=ModelConfig(d_model=32, n_layers=1, n_heads=2, max_seq_len=32), train=train,
                    data_paths=[str(data)])
    cpu = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    tty = FakeTTY()
    events: list[tuple[str, str]] = []  # (what the terminal showed so far, the log line)
    trainer = Trainer(run, cpu, tmp_path / "run", log=lambda line: events.append((tty.getvalue(), line)))
    monkeypatch.setattr(sys, "stderr", tty)
    trainer.fit()
    monkeypatch.undo()
    metrics = [(shown, line) for shown, line in events if line.startswith("step ")]
    assert len(metrics) == 2  # steps 3 and 6
    drawn = tty.getvalue()
    assert "\rstep 1/6 [" in drawn and "\rstep 6/6 [" in drawn
    for shown, _line in metrics:  # wiped right before each metrics line
        assert shown.endswith("\r\x1b[K"), repr(shown[-40:])
    assert drawn.endswith("\r\x1b[K")  # and nothing left behind after the run


def test_trainer_fit_silent_off_a_terminal(tiny_mix, tmp_path, capsys, no_env):
    import torch

    from trainer.config import ModelConfig, RunConfig, TrainConfig
    from trainer.distributed import DistEnv
    from trainer.train import Trainer
    data = tiny_mix
    train = TrainConfig(seq_len=32, global_batch_size=4, micro_batch_size=2, max_steps=2, warmup_steps=1,
                        metrics_interval=2, gc_interval=2, lr=1e-3)
    run = RunConfig(model=ModelConfig(d_model=32, n_layers=1, n_heads=2, max_seq_len=32), train=train,
                    data_paths=[str(data)])
    cpu = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    Trainer(run, cpu, tmp_path / "run", log=lambda _line: None).fit()
    assert capsys.readouterr().err == ""


def test_build_stage_final_line_counts_skipped_stages_apart(spark):
    """A second job over a cached shuffle skips its map stage: the final line must read n/n
    tasks with the skipped ones named, not stop short as if the stage were unfinished."""
    from dolmino.build.progress import Stage

    sc = spark.sparkContext
    pairs = sc.parallelize(range(100), 4).map(lambda x: (x % 7, 1)).reduceByKey(lambda a, b: a + b, 3)
    out = io.StringIO()
    with Stage(sc, "reuse", stream=out) as st:
        assert pairs.count() == 7
        assert sorted(pairs.collect())[0] == (0, 15)  # the map stage's shuffle output is reused
    final = out.getvalue().strip().splitlines()[-1]
    assert final.startswith("[reuse] 10/10 tasks (4 skipped)"), final  # 4 + 3, then 3
    assert " · done in " in final and "ETA" not in final and st.record["wall_s"] > 0


def test_a_stage_with_nothing_to_do_says_so(spark):
    """A rerun with every unit tagged printed "[tag] 0/0 tasks · 0 docs/s · done in 0.0 s" (a tester)."""
    from dolmino.build.progress import Stage

    sc = spark.sparkContext
    out = io.StringIO()
    with Stage(sc, "tag", total_units=0, reused_units=12, stream=out):
        pass
    assert out.getvalue() == "[tag] nothing to do: 12 units reused\n"
    with Stage(sc, "write", stream=out):
        pass
    assert out.getvalue().splitlines()[-1] == "[write] nothing to do"
    with Stage(sc, "ran", reused_units=3, stream=out):  # a stage whose jobs ran shows them as ever
        assert sc.parallelize(range(4), 2).count() == 4
    assert out.getvalue().splitlines()[-1].startswith("[ran] 2/2 tasks · ")


def test_a_running_stage_line_gives_no_task_total_that_will_move(spark):
    """While a job runs, the stages it will skip look pending and jobs the stage submits later
    are unknown: a mid-stage "done/total tasks" grew and shrank (found by a tester). The live
    line says tasks done and running; the stage's whole is its units, which give the ETA."""
    from pyspark import InheritableThread

    from dolmino.build.progress import Stage

    sc = spark.sparkContext
    pairs = sc.parallelize(range(100), 4).map(lambda x: (x % 7, 1)).reduceByKey(lambda a, b: a + b, 3)
    with Stage(sc, "live", total_units=10, quiet=True) as st:
        assert pairs.count() == 7
        st.counters.add("units", 4)
        second = InheritableThread(target=lambda: pairs.map(lambda kv: (time.sleep(0.5), kv)[1]).collect())
        second.start()  # its map stage will be skipped, its result stage runs
        deadline = time.time() + 60
        while re.search(r", [1-9] running", st.line()) is None and time.time() < deadline:
            time.sleep(0.05)
        live = st.line()
        second.join()
    assert re.match(r"\[live\] (7|8|9) tasks done, [1-3] running · 4/10 units · ", live), live  # not "7/14 tasks"
    assert "ETA " in live
    assert st.line(final=True).startswith("[live] 10/10 tasks (4 skipped)")
    with Stage(sc, "untotalled", quiet=True) as bare:  # no units, bytes or documents to count by
        sc.parallelize(range(4), 4).count()
        assert bare.line().startswith("[untotalled] 4/4 tasks known so far, 0 running"), bare.line()


def test_a_line_interval_of_zero_prints_only_each_stages_last_line(spark, monkeypatch):
    """DOLMINO_PROGRESS_S=0 made the line thread wait for nothing: it printed the line in a loop, 4,287 lines
    for a one-document build (found by a tester). 0 is no periodic line; the stage's last line stays."""
    from dolmino.build.progress import Stage

    monkeypatch.setenv("DOLMINO_PROGRESS", "0")
    monkeypatch.setenv("DOLMINO_PROGRESS_S", "0")
    sc = spark.sparkContext
    out = io.StringIO()
    with Stage(sc, "tag", total_units=4, stream=out):
        assert sc.parallelize(range(4), 2).map(lambda x: x + 1).sum() == 10
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[tag] 2/2 tasks · "), lines[:3]


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_a_line_interval_that_is_not_seconds_is_one_error(spark, monkeypatch, value):
    """A DOLMINO_PROGRESS_S that is not a number failed the build with a ValueError traceback once Spark had
    started; a negative one printed lines in a loop (found by a tester)."""
    from dolmino.build.progress import Stage
    from dolmino.errors import BuildError

    monkeypatch.setenv("DOLMINO_PROGRESS", "0")
    monkeypatch.setenv("DOLMINO_PROGRESS_S", value)
    with pytest.raises(BuildError, match=f"DOLMINO_PROGRESS_S='{value}': expected the seconds between"):
        Stage(spark.sparkContext, "tag", stream=io.StringIO())
    Stage(spark.sparkContext, "tag", stream=io.StringIO(), quiet=True)  # --quiet prints no line: not read


def test_a_stage_that_knows_its_documents_shows_them_and_an_eta(spark):
    """The tokenize and cut stages had no total: their lines said `ETA -` from start to end
    (found by a tester). They give their documents, which the line counts and times."""
    from dolmino.build.progress import Stage

    sc = spark.sparkContext
    out = io.StringIO()
    with Stage(sc, "tokenize", total_docs=40, stream=out) as st:
        sc.parallelize(range(4), 4).foreach(lambda _x, c=st.counters: c.add("docs", 10))
        halfway = st.line()
    assert "40/40 docs" in halfway and "ETA -" in halfway  # all counted: nothing left to time
    st.counters.add("docs", -20)
    assert "20/40 docs" in st.line() and "ETA 0m" in st.line()
    assert "· 40/40 docs ·" in out.getvalue().strip().splitlines()[-1]  # the final line, at the stage's end
    # under 10 documents a second with a decimal: 36 documents in 3.1 s read "0 docs/s" (a tester)
    st.started = time.time() - 10.0
    st.counters.add("docs", -16)
    assert " · 0.4 docs/s · " in st.line(), st.line()


def test_a_stage_stopped_under_its_live_line_ends_the_line(spark):
    """Ctrl-C (or a failure) mid-stage left the live line without its newline on a terminal: the
    command's one line was written on after it, "... ETA -build_mix: interrupted; ..." (found by
    a tester)."""
    from dolmino.build.progress import Stage

    sc = spark.sparkContext
    out = FakeTTY()
    stage = Stage(sc, "cut", total_units=4, stream=out)
    stage.interval = 0.01
    with pytest.raises(KeyboardInterrupt):
        with stage:
            deadline = time.time() + 30
            while "[cut] " not in out.getvalue() and time.time() < deadline:
                time.sleep(0.01)
            raise KeyboardInterrupt
    drawn = out.getvalue()
    assert drawn.startswith("\r[cut] 0 tasks done, 0 running · 0/4 units") and drawn.endswith("\x1b[K\n"), drawn
    assert "done in" not in drawn  # no final line for a stage that did not finish


def test_build_stage_record_counts_only_its_own_jobs(spark):
    """Two stages of one name in one session (a second build, the bench's warm runs): each
    record's tasks and final line are its own jobs', not the sum of every run so far."""
    from dolmino.build.progress import Stage

    sc = spark.sparkContext
    records, finals = [], []
    for _ in range(2):
        out = io.StringIO()
        with Stage(sc, "again", stream=out) as st:
            assert sc.parallelize(range(10), 3).map(lambda x: x + 1).sum() == 55
        records.append(st.record)
        finals.append(out.getvalue().strip().splitlines()[-1])
    assert all(f.startswith("[again] 3/3 tasks") for f in finals), finals
    assert records[0]["spark"]["tasks"] == records[1]["spark"]["tasks"] == 3


def test_build_stage_record_has_spark_figures_without_the_ui(spark):
    """The tests' session runs with the UI disabled: shuffle bytes, tasks and storage still come
    from the driver's status store. A reused (skipped) map stage is not counted twice."""
    from pyspark import StorageLevel

    from dolmino.build.progress import Stage
    from dolmino.build.spark import cluster_info, persisted_bytes

    sc = spark.sparkContext
    assert sc.getConf().get("spark.ui.enabled") == "false"
    with Stage(sc, "figures", quiet=True) as st:
        pairs = sc.parallelize(range(1000), 4).map(lambda x: (x % 7, x)).reduceByKey(lambda a, b: a + b, 3)
        pairs.persist(StorageLevel.MEMORY_ONLY)
        assert pairs.count() == 7
        assert persisted_bytes(sc, pairs) > 0
        assert dict(pairs.collect())[0] == sum(range(0, 1000, 7))  # map stage skipped, cached result read
    figures = st.record["spark"]
    assert figures["tasks"] == 4 + 3 + 3, figures
    assert figures["shuffle_write_bytes"] > 0 and figures["shuffle_write_bytes"] == figures["shuffle_read_bytes"]
    assert figures["executor_run_s"] >= 0 and figures["spilled_bytes"] == 0  # under the session's 4g
    pairs.unpersist(blocking=True)
    assert persisted_bytes(sc, pairs) == 0
    info = cluster_info(sc)
    assert info["executors"] == 1 and info["executor_cores"] >= 1  # local mode: the driver is the executor
    assert info["task_cpus"] == 1  # spark.task.cpus, unset: the threads each task's tokenizer runs on


def test_build_stage_record_counts_pythons_merge_spills(spark):
    """PySpark's merge spills once its worker's RSS passes spark.python.worker.memory; the
    worker reports those bytes to the JVM's task metrics, and the stage record carries them.
    The limit is read on the driver when the RDD is defined, so lowering it for one reduce
    spills that reduce alone."""
    from dolmino.build.progress import Stage

    sc = spark.sparkContext
    conf = sc._conf  # the live conf, which RDD._memory_limit reads; getConf() is a copy
    before = conf.get("spark.python.worker.memory")
    conf.set("spark.python.worker.memory", "1m")
    try:
        with Stage(sc, "spills", quiet=True) as st:
            pairs = sc.parallelize(range(20000), 2).map(lambda x: (x, x)).reduceByKey(lambda a, b: a + b, 2)
            assert pairs.count() == 20000
    finally:
        conf.set("spark.python.worker.memory", before)
    assert st.record["spark"]["spilled_bytes"] > 0, st.record["spark"]


def test_a_stage_line_names_which_tokens_it_counts(spark):
    """One `tokens` counter meant tokenized in the tokenize stages and written in the write stage,
    and the line said "tokens/s" for both. The three are apart, in the line and the record."""
    from dolmino.build.progress import Stage

    sc = spark.sparkContext
    with Stage(sc, "write", quiet=True) as st:
        st.counters.add("tokens_read", 5_000)
        st.counters.add("tokens_written", 4_000)
        assert " tokens/s written" in st.line() and "tokenized" not in st.line()
    assert (st.record["tokens_read"], st.record["tokens_tokenized"], st.record["tokens_written"]) == (5_000, 0, 4_000)
    assert "tokens" not in st.record
    with Stage(sc, "tokenize", quiet=True) as st:
        st.counters.add("tokens_tokenized", 3_000)
        assert " tokens/s tokenized" in st.line()
    with Stage(sc, "cut", quiet=True) as st:
        st.counters.add("tokens_read", 3_000)
        assert " tokens/s read" in st.line()


def test_a_live_line_fits_its_terminal_row(spark, monkeypatch, no_env):
    """The live stage line (95-110 characters with its rates) wrapped on an 80-column terminal, and
    each redraw's carriage return went back only to its last row: a row left behind every second
    (a reviewer). A live line fits the terminal, leaving out the least telling figures first; a
    stage's last line, printed once, keeps them all."""
    from dolmino.build.progress import Stage

    sc = spark.sparkContext
    monkeypatch.setenv("COLUMNS", "80")
    out = FakeTTY()
    with Stage(sc, "tokenize", total_units=12_345, total_bytes=3_230_000_000, total_docs=987_654, stream=out) as st:
        st.counters.add("docs", 123_456)
        st.counters.add("units", 1_234)
        st.counters.add("bytes", 400_000_000)
        st.counters.add("tokens_tokenized", 98_765_432)
        full, row = st.line(), st.line(width=79)
        assert len(full) > 79 and "tokens/s tokenized" in full  # the whole line, as an unbounded one reads
        assert len(row) <= 79 and row.startswith("[tokenize] ") and "400 MB/3.23 GB" in row and "ETA " in row, row
        assert "units" not in row and "docs/s" not in row  # the counts the ETA is not measured by go first
        assert st.line(width=90).endswith("tokens/s tokenized · ETA 0m00s"), st.line(width=90)
        assert len(st.line(width=60)) <= 60 and "ETA " in st.line(width=60)
        assert len(st.line(width=20)) == 20 and st.line(width=20).endswith("…")
        st._emit(final=False)
    drawn = out.getvalue().split("\r")
    assert drawn[0] == "" and len(drawn[1].removesuffix("\x1b[K")) <= 79, drawn
    assert "tokens/s tokenized" in drawn[-1] and "units" in drawn[-1]  # the final line, whole


def test_terminal_columns_come_from_columns_the_stream_or_spark_submits_terminal(monkeypatch):
    """Under spark-submit the driver writes into a pipe its JVM copies to the terminal: that
    terminal's width is asked, not assumed."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    monkeypatch.delenv("COLUMNS", raising=False)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 132, 0, 0))
    jvm = subprocess.Popen(["sleep", "30"], stdout=follower, stderr=follower)
    try:
        with os.fdopen(os.dup(follower), "w") as tty:
            assert progress_mod.terminal_columns(tty) == 132
        assert progress_mod.terminal_columns(io.StringIO()) == progress_mod.DEFAULT_COLUMNS
        monkeypatch.setattr(progress_mod.os, "getppid", lambda: jvm.pid)
        monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1")
        assert progress_mod.terminal_columns(io.StringIO()) == 132
        monkeypatch.setenv("COLUMNS", "100")
        assert progress_mod.terminal_columns(io.StringIO()) == 100
    finally:
        jvm.kill()
        jvm.wait()
        os.close(leader)
        os.close(follower)


def test_a_stage_on_a_cluster_without_executors_says_it_waits_for_them(spark, monkeypatch):
    """A standalone master whose workers are gone (or none with the cores and memory asked for)
    took the build and ran nothing, and the line read "0 tasks done, 0 running" for as long as
    anyone waited (a reviewer). Local mode's driver is its executor: never waiting."""
    from dolmino.build.progress import Stage

    sc = spark.sparkContext
    with Stage(sc, "tag", total_units=11, quiet=True) as st:
        assert not st.waiting_for_executors() and "waiting" not in st.line()
        monkeypatch.setattr(sc, "master", "spark://127.0.0.1:7077")
        assert st.waiting_for_executors()  # the driver's own entry only, as on a master without workers
        line = st.line()
        assert line.startswith("[tag] 0 tasks done, waiting for executors: the cluster has given none"), line
        assert len(st.line(width=79)) <= 79 and "waiting for executors (none)" in st.line(width=79)
        assert "waiting" not in st.line(final=True)


def test_a_stage_whose_executors_have_fewer_cores_than_a_task_needs_says_so(spark, monkeypatch):
    """`--conf spark.task.cpus=2` on standalone workers of 1 core: their executors took 1 core each, no task
    could run, and the build waited for ever at "0 tasks done, 0 running" with no word from Spark either
    (found by a tester)."""
    from pyspark import SparkConf

    from dolmino.build import progress as progress_mod
    from dolmino.build.progress import Stage

    sc = spark.sparkContext
    assert progress_mod.active_executor_cores(sc) == []  # local mode: the driver's entry only
    with Stage(sc, "tag", total_units=11, quiet=True) as st:
        monkeypatch.setattr(sc, "master", "spark://127.0.0.1:7077")
        monkeypatch.setattr(st, "waiting_for_executors", lambda: False)  # two executors registered
        monkeypatch.setattr(progress_mod, "active_executor_cores", lambda _sc: [1, 1])
        assert "waiting" not in st.line()  # spark.task.cpus 1: a core will do
        conf = SparkConf(loadDefaults=False).setAll(sc.getConf().getAll()).set("spark.task.cpus", "2")
        monkeypatch.setattr(sc, "getConf", lambda: conf)
        line = st.line()
        assert line.startswith("[tag] 0 tasks done, waiting for executors with 2 cores: a task needs "
                               "spark.task.cpus=2 and the executors have at most 1"), line
        assert len(st.line(width=79)) <= 79 and "a task needs 2 cores, executors have 1" in st.line(width=79)
        monkeypatch.setattr(progress_mod, "active_executor_cores", lambda _sc: [1, 2])  # one that can run it
        assert "waiting" not in st.line()
        monkeypatch.setattr(progress_mod, "active_executor_cores", lambda _sc: [1, 1])
        assert "waiting" not in st.line(final=True)
