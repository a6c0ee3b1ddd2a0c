"""A live line per build stage on the driver, and the per-stage record for the report.

Counts come from Spark accumulators that tasks add to as they finish units (documents,
bytes, tokens read / tokenized / written, CPU seconds) and from Spark's status tracker
(tasks done and running; done / total on a stage's last line, once it is known). On a
terminal the line is rewritten in place every second (under spark-submit too, whose JVM
copies the driver's output to its terminal; `DOLMINO_PROGRESS=1` / `0` decide outright);
otherwise (CI, a log file) one line is printed every
`DOLMINO_PROGRESS_S` seconds (default 30; 0: none) and at the end of each stage.

The stage record (wall time, CPU seconds of the Python work in tasks, tokens read back as ids,
tokenized and written, Spark's executor run time and shuffle/spill bytes for the stage's jobs)
goes into report.json's `stages`. Tokens are counted apart because the stages differ in which
they touch: tag tokenizes only its sample (for tokens per byte) and reads text, the tokenize
stages tokenize, cut reads the tokenized documents back, write reads them and writes the parts;
one `tokens` figure meant tokenized in one row and written in the next.
Accumulators added in transformations can count a retried task twice: they drive the
display and the CPU figure, never the accounting (which comes from collected records).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import threading
import time

from dolmino.build.spark import active_executor_cores, settled_jobs
from dolmino.errors import BuildError
from dolmino.manifest import format_bytes, format_count
from dolmino.progress import DEFAULT_COLUMNS, terminal_columns
from dolmino.progress import enabled as progress_enabled

INTERVAL_VAR = "DOLMINO_PROGRESS_S"
TOKENS = ("tokens_read", "tokens_tokenized", "tokens_written")
COUNTERS = ("units", "bytes", "docs", *TOKENS, "cpu_s", "fetched_ahead")
_STAGE_RUNS = itertools.count(1)


class Counters:
    """Named accumulators; picklable into Spark closures (each is a Spark Accumulator)."""

    def __init__(self, sc):
        from pyspark.accumulators import AccumulatorParam

        class _Float(AccumulatorParam):
            def zero(self, value):
                return 0.0

            def addInPlace(self, a, b):
                return a + b

        self._acc = {name: sc.accumulator(0.0, _Float()) for name in COUNTERS}

    def add(self, name: str, value) -> None:
        self._acc[name].add(float(value))

    def values(self) -> dict[str, float]:
        return {name: acc.value for name, acc in self._acc.items()}


def line_interval() -> float | None:
    """Seconds between a stage's lines off a terminal, from DOLMINO_PROGRESS_S (default 30); None for 0: each
    stage's last line only. 0 or a negative number made the line thread wait for nothing, so it printed the
    line in a loop (4,287 lines for a one-document build), and a value that is not a number failed the build
    with a traceback once Spark had started (found by a tester): the CLI checks it before Spark starts."""
    text = os.environ.get(INTERVAL_VAR, "").strip()
    if not text:
        return 30.0
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise BuildError(f"{INTERVAL_VAR}={text!r}: expected the seconds between a build stage's progress lines "
                         "off a terminal, a number of 0 or more (0: only each stage's last line)")
    return seconds or None


def _eta(done: float, total: float, elapsed: float) -> str:
    if done <= 0 or total <= 0 or done >= total:
        return "-"
    seconds = elapsed * (total - done) / done
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class Stage:
    """`with Stage(sc, "tag", totals) as st:` runs a stage under its own job group with a live line."""

    def __init__(self, sc, name: str, *, total_bytes: int = 0, total_units: int = 0, total_docs: int = 0,
                 reused_units: int = 0, quiet: bool = False, stream=None):
        self.sc = sc
        self.name = name
        # The job group is this stage run's own: named after the stage alone, a second build in
        # the same session (the bench's warm runs, a notebook) summed the earlier builds' jobs
        # into its tasks and shuffle bytes.
        self.group = f"{name}#{next(_STAGE_RUNS)}"
        self.total_bytes = total_bytes
        self.total_units = total_units
        self.total_docs = total_docs  # a stage that knows its documents, not its units (tokenize, cut)
        self.reused_units = reused_units  # the units a rerun found done: its final line says so
        self.counters = Counters(sc)
        self.stream = stream or sys.stderr
        self.quiet = quiet
        # a terminal, also behind spark-submit's JVM; DOLMINO_PROGRESS=1/0 decides outright
        self.tty = progress_enabled(self.stream)
        # seconds between live lines; None: no line until the stage's last
        self.interval = None if quiet else 1.0 if self.tty else line_interval()
        self.columns = terminal_columns(self.stream) if self.tty and not quiet else DEFAULT_COLUMNS
        self.record: dict = {}
        self._stop = threading.Event()
        self._thread = None
        self._drawn = False  # a live line is on the terminal, without its newline

    def __enter__(self) -> "Stage":
        self.started = time.time()
        self.sc.setJobGroup(self.group, f"dolmino {self.name}", interruptOnCancel=True)
        if self.interval is not None:
            self._thread = threading.Thread(target=self._run, name=f"progress-{self.name}", daemon=True)
            self._thread.start()
        return self

    def _tasks(self) -> tuple[int, int, int, int]:
        """(tasks done, tasks to run, tasks skipped, tasks running), over the stage's jobs so far.

        Only a finished job's figures are final. A stage of a finished job that ran no task was
        skipped (Spark reused its shuffle output): counted as pending, the final line stopped at
        e.g. 19/39. While a job runs, the stages it will skip look pending like the ones still
        to run (Spark marks them skipped at the job's end), and the jobs a build stage submits
        later are not known at all: "to run" is a total only on the final line."""
        tracker = self.sc.statusTracker()
        done = total = skipped = running = 0
        for job_id in tracker.getJobIdsForGroup(self.group):
            job = tracker.getJobInfo(job_id)
            finished = job is not None and str(job.status) == "SUCCEEDED"
            for sid in (job.stageIds if job else ()):
                info = tracker.getStageInfo(sid)
                if not info:
                    continue
                if finished and info.numCompletedTasks == 0 and info.numActiveTasks == 0:
                    skipped += info.numTasks
                    continue
                done += info.numCompletedTasks
                total += info.numTasks
                running += info.numActiveTasks
        return done, total, skipped, running

    def line(self, final: bool = False, width: int | None = None) -> str:
        """The stage's line; `width`: at most that many characters, the least telling figures left
        out first (the counts the ETA is not measured by, docs/s where tokens/s is shown, words of
        the tasks' part, the last rate), then cut."""
        v = self.counters.values()
        elapsed = max(time.time() - self.started, 1e-9)
        done, total, skipped, running = self._tasks()
        if final and not (total or skipped or any(v.values())):
            # No job ran: a rerun with every unit done read "[tag] 0/0 tasks · 0 docs/s · done in 0.0 s"
            # (found by a tester).
            reused = f": {self.reused_units:,} units reused" if self.reused_units else ""
            return f"[{self.name}] nothing to do{reused}"
        if final:
            head = short = f"[{self.name}] {done}/{total} tasks" + (f" ({skipped:,} skipped)" if skipped else "")
        elif not (self.total_units or self.total_bytes or self.total_docs):
            # nothing else to measure the stage by (a resumed mix's tokenize stage): the tasks
            # known so far, said to be that (a reviewer: it showed no progress at all)
            head = f"[{self.name}] {done:,}/{total:,} tasks known so far, {running:,} running"
            short = f"[{self.name}] {done:,}/{total:,} tasks so far, {running:,} running"
        else:
            # no "done/total" while running: that total grew as the stage submitted jobs and
            # held stages Spark would skip (found by a tester); the units, bytes or documents
            # below are the stage's whole and carry its ETA
            head = f"[{self.name}] {done:,} tasks done, {running:,} running"
            short = f"[{self.name}] {done:,} done, {running:,} running"
        if not final and not running and self.waiting_for_executors():
            head = (f"[{self.name}] {done:,} tasks done, waiting for executors: the cluster has given none (are "
                    "its workers registered, with the cores and memory asked for? its master's UI says)")
            short = f"[{self.name}] {done:,} done, waiting for executors (none)"
        elif not final and not running and (shortfall := self.executors_short_of_cores()):
            most, needed = shortfall
            head = (f"[{self.name}] {done:,} tasks done, waiting for executors with {needed} cores: a task needs "
                    f"spark.task.cpus={needed} and the executors have at most {most} (workers of {needed} cores or "
                    "more, or a smaller spark.task.cpus)")
            short = f"[{self.name}] {done:,} done, waiting: a task needs {needed} cores, executors have {most}"
        by = ((v["bytes"], self.total_bytes) if self.total_bytes else (v["units"], self.total_units)
              if self.total_units else (v["docs"], self.total_docs))
        counts, eta_counts = [], []  # every count; the one the ETA is measured by
        if self.total_units:
            counts.append(f"{int(v['units']):,}/{self.total_units:,} units")
        if self.total_bytes:
            # bytes in byte units: format_count's "B" is billions, and 3.23 GB read "3.23BB" (a reviewer)
            counts.append(f"{format_bytes(int(v['bytes']))}/{format_bytes(self.total_bytes)}")
        if self.total_docs:
            counts.append(f"{int(v['docs']):,}/{self.total_docs:,} docs")
        if counts:
            eta_counts = [counts[1 if self.total_units and self.total_bytes else 0]]
        rate = v["docs"] / elapsed
        # under 10 with a decimal: 36 documents in 3.1 s read "0 docs/s" (a tester)
        rates = [f"{rate:,.1f} docs/s" if 0 < rate < 10 else f"{rate:,.0f} docs/s"]
        # the stage's main token figure, named: "tokens/s" alone read as tokenized in every stage
        kind = next((name for name in ("tokens_tokenized", "tokens_written", "tokens_read") if v[name]), None)
        if kind:
            rates.append(f"{format_count(v[kind] / elapsed)} tokens/s {kind.removeprefix('tokens_')}")
        tail = f"done in {elapsed:,.1f} s" if final else f"ETA {_eta(by[0], by[1], elapsed)}"
        text = " · ".join([head, *counts, *rates, tail])
        if width is None or len(text) <= width:
            return text
        for parts in ([head, *eta_counts, *rates, tail], [head, *eta_counts, rates[-1], tail],
                      [short, *eta_counts, rates[-1], tail], [short, *eta_counts, tail]):
            text = " · ".join(parts)
            if len(text) <= width:
                return text
        return text[:max(width - 1, 1)] + "…"

    def waiting_for_executors(self) -> bool:
        """No executor but the driver on a cluster master: a master whose workers are gone, or
        none has the cores or memory asked for, takes the build and runs nothing, and the line
        read "0 tasks done, 0 running" for as long as anyone waited (Spark's own warning comes
        every 15 s, only where its log level shows warnings; a reviewer)."""
        if self.sc.master.startswith("local"):
            return False
        try:
            return len(self.sc._jsc.sc().statusTracker().getExecutorInfos()) <= 1  # the driver's own entry
        except Exception:  # a stopping context: the line is not worth a failure
            return False

    def executors_short_of_cores(self) -> tuple[int, int] | None:
        """(the most cores an executor has, spark.task.cpus) where every executor of a cluster master has fewer
        cores than a task needs, else None. Standalone workers of 1 core took `--conf spark.task.cpus=2`,
        started executors of 1 core, and the build waited for ever at "0 tasks done, 0 running", with no word
        from Spark either (found by a tester)."""
        if self.sc.master.startswith("local"):  # Spark refuses local[N] with fewer threads than spark.task.cpus
            return None
        needed = int(self.sc.getConf().get("spark.task.cpus", "1"))
        cores = active_executor_cores(self.sc) if needed > 1 else None
        return (max(cores), needed) if cores and max(cores) < needed else None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._emit(final=False)

    def _emit(self, final: bool) -> None:
        # a live line redrawn on a terminal fits one row of it (a wider one wrapped, and each
        # redraw left a row behind); a stage's last line, printed once, says everything
        text = self.line(final, width=None if final or not self.tty else self.columns - 1)
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else "\x1b[K"))
            self._drawn = not final
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.quiet:
            if exc_type is None:
                # The tracker takes in a job's end after collect() returns: read at once, a skipped
                # stage still looked pending and the final line stopped at e.g. "1/5 tasks".
                settled_jobs(self.sc.statusTracker(), self.group)
                self._emit(final=True)
            elif self._drawn:
                # The stage stopped (Ctrl-C, a failure) under its live line: the command's one line
                # was written on after it ("... ETA 0m12sbuild_mix: interrupted; ...", found by a tester).
                self.stream.write("\n")
                self.stream.flush()
        from dolmino.build.spark import group_metrics

        v = self.counters.values()
        self.record = {"wall_s": round(time.time() - self.started, 3), "task_cpu_s": round(v["cpu_s"], 3),
                       "units": int(v["units"]), "bytes": int(v["bytes"]), "docs": int(v["docs"]),
                       **{name: int(v[name]) for name in TOKENS}, "fetched_ahead": int(v["fetched_ahead"]),
                       "spark": group_metrics(self.sc, self.group)}
        self.sc.setLocalProperty("spark.jobGroup.id", None)
