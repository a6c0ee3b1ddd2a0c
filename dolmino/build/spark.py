"""The Spark session and what the driver learns from Spark about a running build.

`make_spark` sets nothing that spark-submit, spark-defaults.conf or `--conf` can decide:
the master comes from them (local[*] is spark-submit's own default when nothing sets
one); the script's `--master` and `--driver-memory` apply only when given. Forcing
`local[*]` from a fresh SparkConf() (which sees none of spark-submit's settings, because
the JVM is not up yet when Python reads it) ran "cluster" builds in local mode.

Stage metrics (shuffle and spill bytes, executor run time) and executors come from the
driver's status store, the one behind Spark's UI and REST API, read through py4j. It is
there with the UI disabled too. The REST API served the same figures as JSON of every job
and stage of the session on each call: ~0.7 core-s of the driver JVM per mix on
bench_scale's pool (serving and compiling the JSON), against ~0.05 s of py4j calls. Storage
comes from the block managers' master (`getRDDStorageInfo`).
"""

from __future__ import annotations

import gc
import os
import pickle
import re
import subprocess
import sys
import threading
import time

# Where S3 lives and how to talk to it (never credentials): executors must reach the same
# endpoint as the driver, with the same retry and checksum settings (dolmino.s3.client).
# On a cluster, credentials come from the executors' own chain (instance roles,
# spark.executorEnv.*); in local mode the workers inherit the driver's environment.
S3_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS",
                   "AWS_RETRY_MODE", "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION")


# A Python worker that crashes (a segmentation fault in a native library or a scorer's ctypes call) then
# leaves its Python stack and "Fatal Python error: ..." in the task's failure: without it a crash read as
# a worker killed or out of memory, "rerun to resume", and the rerun crashed the same way (a tester).
FAULTHANDLER = "spark.python.worker.faulthandler.enabled"
S3A_ENDPOINT = "spark.hadoop.fs.s3a.endpoint"
# Which settings Spark's UI and event log show as "*********(redacted)", by key or value. Spark's own pattern
# (4.3's, with "_" added to access.key) missed `spark.executorEnv.AWS_ACCESS_KEY_ID`, the setting our
# "no usable S3 credentials in this executor" hint names: the key id went into every event log (found by a tester).
REDACTION_REGEX = "spark.redaction.regex"
REDACTED = r"(?i)secret|password|token|access[._]?key|credential"
# A key of a Java properties file (spark-defaults.conf): up to the first blank, '=' or ':'; '#' and '!' start comments.
_PROPERTY_KEY = re.compile(r"\s*([^\s=:#!][^\s=:]*)")


def make_spark(app_name: str, master: str | None = None, driver_memory: str | None = None,
               quiet_start: bool = False):
    """The SparkSession for a build; explicit arguments override configuration, nothing else does.

    `quiet_start` (a session the command starts): under spark-submit, unless spark.log.level is
    configured (`--conf`, spark-defaults.conf), the context starts at WARN. Set after the start,
    the level came too late for the ~85 INFO lines SparkContext logs while starting, which the
    README's `spark-submit dolmino/build_mix.py` printed before the build's first line (found by
    a tester). A JVM the command launches itself (`dolmino build`) starts quiet already (PySpark's
    WARN), and is launched only once the builder holds every setting (`check_scratch_space` launches it):
    spark.driver.memory must reach its launch. Either way the
    session prints the UI's address, which Spark's quieted INFO line gave. A session the command
    starts gets the Python workers' faulthandler (`FAULTHANDLER`), Spark's redaction extended to
    AWS_ACCESS_KEY_ID (`REDACTED`) and AWS_ENDPOINT_URL without its password in `S3A_ENDPOINT`
    (`_hadoop_endpoint`), each unless the user's configuration sets that key (`_user_sets`), and starts only
    where its Spark scratch space can be written (`check_scratch_space`)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from dolmino.progress import under_spark_submit

    builder = SparkSession.builder.appName(app_name).config("spark.ui.showConsoleProgress", "false")
    quieted = False
    submitted = None  # spark-submit's configuration
    # `dolmino build`'s own JVM starts at PySpark's WARN too, so Spark's INFO line with the UI's address,
    # where the executors' logs are, was never shown (a tester)
    launched = quiet_start and not under_spark_submit() and not _user_sets("spark.log.level", None)
    if quiet_start and under_spark_submit():
        from pyspark import SparkConf, SparkContext

        SparkContext._ensure_initialized()  # connects to spark-submit's JVM, which holds its configuration
        submitted = SparkConf()
        if submitted.get("spark.log.level", None) is None:
            builder = builder.config("spark.log.level", "WARN")
            quieted = True
    if quiet_start and not _user_sets(FAULTHANDLER, submitted):
        builder = builder.config(FAULTHANDLER, "true")
    if quiet_start and not _user_sets(REDACTION_REGEX, submitted):
        builder = builder.config(REDACTION_REGEX, REDACTED)
    if master:
        builder = builder.master(master)
    if driver_memory:
        builder = builder.config("spark.driver.memory", driver_memory)
    # Only a session the command starts: a caller's session logged its settings when it started.
    endpoint = _hadoop_endpoint() if quiet_start else None
    if endpoint and not _user_sets(S3A_ENDPOINT, submitted):
        builder = builder.config(S3A_ENDPOINT, endpoint)
    if quiet_start:
        check_scratch_space(builder)
    spark = builder.getOrCreate()
    if (quieted or launched) and spark.sparkContext.uiWebUrl:  # Spark's INFO line with it is quieted (a reviewer)
        print(f"Spark UI: {spark.sparkContext.uiWebUrl} (stages, executors' logs)", file=sys.stderr)
    isolate_worker_imports(spark.sparkContext)
    quiet_py4j_send_failures()
    return spark


class ScratchSpaceError(Exception):
    """The driver's Spark scratch space has no directory it can write (`check_scratch_space`)."""


def check_scratch_space(builder) -> None:
    """Raise ScratchSpaceError, before the context starts, where no directory of the driver's Spark scratch
    space (spark.local.dir, SPARK_LOCAL_DIRS, which goes before it, or else java.io.tmpdir) can be written:
    Spark's block manager then ends the driver's JVM with exit status 53 and one log line, "Failed to create any
    local dir." (spark-submit), or the command said "Spark stopped under it" (`dolmino build`; found by a
    tester). The directories are Spark's own reading of its configuration (Utils.getConfiguredLocalDirs), so
    the JVM `dolmino build` launches is launched here, with the builder's settings, as getOrCreate would
    launch it. One directory that can be written is enough, as it is for Spark. Directories a cluster manager
    set (a YARN container's, a standalone worker's) are Spark's to report."""
    from pyspark import SparkConf, SparkContext

    from dolmino.progress import under_spark_submit

    options = list(builder._options.items())  # noqa: SLF001 - PySpark's; getOrCreate passes them the same way
    SparkContext._ensure_initialized(conf=SparkConf().setAll(options))  # noqa: SLF001 - launches or joins the JVM
    jvm = SparkContext._jvm  # noqa: SLF001
    conf = SparkConf().setAll(options)
    dirs = [str(d) for d in jvm.org.apache.spark.util.Utils.getConfiguredLocalDirs(conf._jconf)]  # noqa: SLF001
    env = jvm.System.getenv("SPARK_LOCAL_DIRS")
    given = conf.get("spark.local.dir", None)
    if env is not None and set(dirs) <= set(env.split(",")):
        setting, other = "SPARK_LOCAL_DIRS", "SPARK_LOCAL_DIRS=DIR"
    elif given is not None and set(dirs) <= set(given.split(",")):
        # `dolmino build` takes no --conf: SPARK_LOCAL_DIRS in its environment reaches the JVM it launches
        setting, other = "spark.local.dir", ("--conf spark.local.dir=DIR" if under_spark_submit() else
                                             "SPARK_LOCAL_DIRS=DIR, which goes before spark.local.dir")
    elif dirs == [jvm.System.getProperty("java.io.tmpdir")]:
        setting, other = "java.io.tmpdir, as neither spark.local.dir nor SPARK_LOCAL_DIRS is set", (
            "--conf spark.local.dir=DIR" if under_spark_submit() else "SPARK_LOCAL_DIRS=DIR")
    else:
        return
    if problem := scratch_space_problem(dirs, setting, other):
        raise ScratchSpaceError(problem)


def scratch_space_problem(dirs: list[str], setting: str, other: str) -> str | None:
    """One line for a scratch space (`dirs`, from `setting`) none of whose directories can be made and
    written, saying how to give Spark `other` ones; None where one can. Spark makes them as the driver does
    here (with their parents), so a directory still to be made is no problem."""
    from dolmino.storage import make_writable_dir

    dirs = [d for d in dirs if d]
    reasons = [(d, make_writable_dir(d)) for d in dirs]
    if not reasons or any(reason is None for _, reason in reasons):
        return None
    if len(reasons) == 1:
        what, fix = f"cannot be written ({reasons[0][1]})", "make it writable"
    else:
        what = "has no directory that can be written (" + "; ".join(f"{d}: {why}" for d, why in reasons) + ")"
        fix = "make one of them writable"
    return (f"Spark's scratch space on the driver, {','.join(dirs)} ({setting}), {what}: {fix}, or give Spark a "
            f"writable directory ({other})")


def _user_sets(key: str, submitted) -> bool:
    """Whether the user's Spark configuration sets `key`: spark-submit's (`submitted`, its JVM's SparkConf,
    which holds its --conf and spark-defaults.conf), else what the JVM this command launches (`dolmino
    build`) will read, PYSPARK_SUBMIT_ARGS and spark-defaults.conf: a SparkConf() before that launch sees
    neither, and the session's own setting went over the file's (found by a reviewer)."""
    if submitted is not None:
        return submitted.contains(key)
    if key in os.environ.get("PYSPARK_SUBMIT_ARGS", ""):
        return True
    conf_dir = os.environ.get("SPARK_CONF_DIR")
    if not conf_dir:  # where spark-submit looks, below the SPARK_HOME PySpark launches it from
        from pyspark.find_spark_home import _find_spark_home

        conf_dir = os.path.join(_find_spark_home(), "conf")
    try:
        with open(os.path.join(conf_dir, "spark-defaults.conf"), encoding="utf-8", errors="replace") as fh:
            return any((m := _PROPERTY_KEY.match(line)) is not None and m.group(1) == key for line in fh)
    except OSError:
        return False


def _hadoop_endpoint() -> str | None:
    """AWS_ENDPOINT_URL without its user:password@, for `spark.hadoop.fs.s3a.endpoint` (`S3A_ENDPOINT`), where
    the URL holds one; else None.

    Spark's driver copies AWS_ENDPOINT_URL into Hadoop's `fs.s3a.endpoint` as it is, and its UI's Environment
    page and its event log show Hadoop's settings redacted by key name only (`fs.s3a.secret.key`, not
    `fs.s3a.endpoint`): the endpoint's password was in every event log of a build (found by a tester).
    `spark.hadoop.*` settings are applied after that copy. botocore ignores the userinfo anyway
    (`dolmino.s3.client`), and the build reads S3 through boto3, not s3a. Read as loosely as the redaction
    reads it (`dolmino.s3._endpoint_passwords`): without a scheme, or with a "/" or "@" in the password, all
    up to the last "@" goes; an "@" in the endpoint's path loses that part of a setting nothing here reads."""
    value = os.environ.get("AWS_ENDPOINT_URL") or ""
    if "@" not in value:
        return None
    scheme, sep, _ = value.partition("://")
    return f"{scheme}{sep}{value.rpartition('@')[2]}" if sep else value.rpartition("@")[2]


def start_failure(exc: BaseException, master: str | None) -> str:
    """One line for a session that could not start: a master URL Spark cannot parse, a master that
    never answered (Spark then gives up with "Cannot call methods on a stopped SparkContext").
    Both were a py4j traceback of 60-90 lines, exit 1 (found by a tester)."""
    text = ""
    java = getattr(exc, "java_exception", None)
    if java is not None:
        try:
            text = str(java.toString())
        except Exception:  # noqa: BLE001 - the JVM may be gone: the Python side's text then
            text = ""
    lines = [ln.strip() for ln in (text or str(exc)).splitlines() if ln.strip() and not ln.strip().startswith("at ")]
    reason = next((ln.removeprefix(": ") for ln in lines if not ln.startswith("An error occurred")),
                  type(exc).__name__)
    if "stopped SparkContext" in reason:
        reason = "the master did not take the application (is a master running at that URL, with a worker?)"
    configured = None if master else configured_master()
    where = (f"--master {master}" if master else f"master {configured} (spark-submit's or spark-defaults.conf's)"
             if configured else "the master spark-submit was given")
    from dolmino.s3 import redact

    # a spark://user:password@ URL, which standalone Spark refuses, was quoted whole, twice (a tester)
    return redact(f"cannot start Spark with {where}: {reason}")


def configured_master() -> str | None:
    """The `spark.master` the driver's JVM was launched with (spark-submit's `--master`, its
    `--conf`, spark-defaults.conf), where that JVM still answers: a master that never answered
    was named only as "the master spark-submit was given", not by its URL (found by a tester)."""
    try:
        from pyspark import SparkConf, SparkContext

        if SparkContext._jvm is None:  # no JVM: nothing configured one
            return None
        return SparkConf().get("spark.master", None)
    except Exception:  # noqa: BLE001 - the JVM may be gone: the message then names no URL
        return None


def stop_session(spark, interrupted: bool) -> None:
    """Stop the session; after Ctrl-C the JVM, which got the same signal from the terminal, may
    be gone already, and stop() then raised a py4j traceback after the one-line message. A
    second Ctrl-C while an interrupted command stops Spark (an impatient user) raised a
    30-line traceback out of PySpark's stop (found by a tester): the command is ending already.
    A JVM that is gone (killed, crashed) leaves nothing to stop: PySpark's stop then raised py4j's
    ConnectionRefusedError with its traceback, or warned "Unable to cleanly shutdown Spark JVM
    process" after the command's line had said so (found by a tester)."""
    import warnings

    try:
        with warnings.catch_warnings():
            if interrupted:
                warnings.filterwarnings("ignore", "Unable to cleanly shutdown Spark JVM process", RuntimeWarning)
            spark.stop()
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - only where the run was interrupted or Spark is gone
        if not (interrupted or jvm_unreachable(exc)):
            raise


_TERMINATED: list[int] = []  # the signal that ended the command, once it came


def exit_on_sigterm() -> None:
    """SIGTERM (`timeout`, a scheduler, `kill`) ends the command as an exception would: Spark is
    stopped and exit handlers run (the staged copies of models and indexes are removed). Raised
    inside a py4j call, the exit comes back as a py4j error (the JVM got the signal too):
    `SparkCommand.stopped` reads `_TERMINATED`, not the exception, to tell it from a failure."""
    import signal

    def terminated(signum, _frame):
        _TERMINATED.append(signum)
        shutting_down()
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, terminated)


_SPARK_GONE = ("SparkContext has been shutdown", "Cannot call methods on a stopped SparkContext",
               "SparkContext was shut down")


def spark_gone(exc: BaseException) -> bool:
    """`exc` (or one it was raised from) says the session's JVM is no longer there to answer."""
    return _any_raised(exc, _says_gone)


def jvm_unreachable(exc: BaseException) -> bool:
    """`exc` (or one it was raised from) is py4j failing to reach the session's JVM: the JVM exited
    (killed, crashed). py4j raises its own Py4JNetworkError, or the socket's ConnectionRefusedError
    where it opens a new connection; the JVM gone under a `collect` also left a Py4JJavaError whose
    text py4j must ask of that JVM. The last two were not recognised: ~150 lines of traceback and
    exit 1 instead of the command's one line (found by a tester). An OSError raised anywhere but in py4j
    (boto3 reaching S3 from the driver) is not the JVM's, and keeps its own message."""
    return _any_raised(exc, _unreachable)


def _any_raised(exc: BaseException, test) -> bool:
    seen: set[int] = set()
    item: BaseException | None = exc
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        if test(item):
            return True
        item = item.__cause__ or item.__context__
    return False


def _says_gone(item: BaseException) -> bool:
    if _py4j_connection_failure(item):
        return True
    text = _text(item)
    return text is None or any(m in text for m in _SPARK_GONE)


def _unreachable(item: BaseException) -> bool:
    return _py4j_connection_failure(item) or _text(item) is None


def _text(item: BaseException) -> str | None:
    """str(item), or None where py4j cannot reach the JVM to give it: a Py4JJavaError asks its JVM
    for its text ("<exception str() failed>" where it is gone). A text that cannot be read for
    another reason says nothing ("")."""
    try:
        return str(item)
    except Exception as failure:  # noqa: BLE001 - a text that cannot be read says nothing else
        return None if jvm_unreachable(failure) else ""


_SOCKET_MODULES = ("socket", "ssl", "selectors")  # where py4j's socket calls raise, below py4j's own frame


def launched_jvm(context) -> subprocess.Popen | None:
    """PySpark's Popen of the JVM it launched for `context` (a SparkContext, or its class): that of
    `dolmino build`; None under spark-submit, whose JVM launched this process."""
    return getattr(getattr(context, "_gateway", None), "proc", None)  # noqa: SLF001 - PySpark's


def _exits_within(proc, seconds: float) -> bool:
    """Whether the JVM process `proc` has exited, or exits within `seconds`."""
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _py4j_connection_failure(item: BaseException) -> bool:
    """Py4JNetworkError, or a connection py4j's own code could not open or keep. Only a refused or
    reset connection says the JVM is gone: any OSError there took a driver out of file descriptors
    ("Too many open files", as py4j opens its socket) for Spark stopped under it, the cause unsaid
    (a reviewer)."""
    if type(item).__name__ == "Py4JNetworkError":
        return True
    if not isinstance(item, ConnectionError):
        return False
    raised_in, tb = "", item.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module not in _SOCKET_MODULES:
            raised_in = module
        tb = tb.tb_next
    return raised_in == "py4j" or raised_in.startswith("py4j.")


def interrupted_by_ctrl_c(exc: BaseException) -> bool:
    """`exc` is Ctrl-C, or was raised while handling it: PySpark's cleanup of a `collect()`
    interrupted while it connected to the JVM raises UnboundLocalError in its `finally`, which
    read as an unexpected error with its traceback (found by a tester)."""
    seen: set[int] = set()
    item: BaseException | None = exc
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        if isinstance(item, KeyboardInterrupt):
            return True
        item = item.__cause__ or item.__context__
    return False


class SparkCommand:
    """What the commands that run Spark (build, tag, mix, synth) share around their work: one
    line for a session that cannot start, for Ctrl-C and for SIGTERM (each was a py4j traceback
    of tens of lines; found by testers), and a stop that a JVM already gone does not turn into
    another traceback.

        command = SparkCommand(prog, "finished partitions are kept")
        spark = command.start(app_name, master, driver_memory)
        if spark is None:
            return 2
        try:
            ...
        except BaseException as exc:
            if (status := command.stopped(exc)) is not None:
                return status
            raise
        finally:
            command.stop(spark)
    """

    def __init__(self, prog: str, kept: str):
        self.prog, self.kept = prog, kept
        self.interrupted = False
        self.races: ShutdownRaces | None = None  # of the session the command started
        self.jvm = None  # the Popen of the JVM the command launched (`dolmino build`; spark-submit's is its parent)

    def start(self, app_name: str, master: str | None, driver_memory: str | None):
        """The session, or None (its line printed) where Spark cannot start; Ctrl-C or SIGTERM
        while it starts ends the command here (SystemExit), with `stopped`'s line and status."""
        from pyspark.sql import SparkSession

        exit_on_sigterm()
        quiet_py4j_send_failures()  # already while the session starts: Ctrl-C there had py4j log its tracebacks
        existing = SparkSession.getActiveSession()  # a caller's own session (a notebook): its logging stays
        try:
            spark = make_spark(app_name, master, driver_memory, quiet_start=existing is None)
        except BaseException as exc:  # noqa: BLE001
            self._end_if_stopped(exc)
            if not isinstance(exc, Exception):
                raise
            # a master URL Spark refuses or that never answers, a scratch space it cannot write: one line
            told = str(exc) if isinstance(exc, ScratchSpaceError) else start_failure(exc, master)
            print(f"{self.prog}: error: {told}", file=sys.stderr)
            return None
        if existing is None:
            self.jvm = launched_jvm(spark.sparkContext)
            try:
                self.races = console_log_levels(spark.sparkContext)
            except BaseException as exc:  # noqa: BLE001 - its first calls into the JVM just started
                self._end_if_stopped(exc)
                raise
        return spark

    def _end_if_stopped(self, exc: BaseException) -> None:
        """Ctrl-C or SIGTERM while Spark starts (seconds, longer on a busy machine) printed ~45 lines
        of py4j tracebacks, or nothing at all (found by a tester): the line and status of an
        interrupted build (SystemExit), which the caller would otherwise take for a start failure.
        So does a JVM killed while it starts ("cannot start Spark with --master local[2]: [Errno
        111] Connection refused" blamed the master; found by a tester) or just after."""
        if interrupted_by_ctrl_c(exc) or _TERMINATED or jvm_unreachable(exc):
            if self.jvm is None:  # the JVM launched for the session that did not start (none under spark-submit)
                from pyspark import SparkContext

                self.jvm = launched_jvm(SparkContext)
            raise SystemExit(self.stopped(exc)) from None

    def stopped(self, exc: BaseException) -> int | None:
        """The exit status where `exc` is Ctrl-C, SIGTERM or Spark gone from under the command
        (its line printed), else None."""
        if interrupted_by_ctrl_c(exc):
            how, status = "interrupted", 130
        elif _TERMINATED:
            how, status = f"terminated (signal {_TERMINATED[0]})", 128 + _TERMINATED[0]
        elif spark_gone(exc):  # `kill` of spark-submit's JVM alone: a 30-line traceback (found by a tester)
            how, status = "Spark stopped under it (its JVM was terminated or died, or Spark shut the application " \
                          "down: the Spark log above says which)", 2
            if self.jvm is not None and jvm_unreachable(exc):
                self._wait_for_jvm_exit()
        else:
            return None
        if status != 2 and self.races is not None:  # Ctrl-C or SIGTERM (not Spark gone): before the stop
            try:
                self.races.drop()
            except KeyboardInterrupt:  # a second Ctrl-C (an impatient user): the command is ending already
                pass
        self.interrupted = True
        print(f"{self.prog}: {how}; rerun the same command to resume ({self.kept})", file=sys.stderr)
        return status

    JVM_EXIT_S = 10.0  # at most: the line then comes regardless

    def _wait_for_jvm_exit(self) -> None:
        """The JVM the command launched, killed with SIGTERM, logs its shutdown (its tasks' "Error in
        TaskCompletionListener", ~50 lines of Java stack) for a few seconds after py4j lost it: that log
        came after the one line, which says "the Spark log above" (found by a tester)."""
        try:
            _exits_within(self.jvm, self.JVM_EXIT_S)
        except KeyboardInterrupt:  # a second Ctrl-C: the command is ending already
            pass

    def stop(self, spark) -> None:
        try:
            stop_session(spark, self.interrupted)
        finally:
            if self.races is not None:
                self.races.disarm()


# Loggers of the driver's JVM that print a failed task's Python traceback: the task set's "Lost
# task" warning (each attempt), the block manager's "Putting block ... failed", and in local mode
# the executor's own "Exception in task" (an executor of a cluster logs to its worker's files).
TASK_FAILURE_LOGGERS = {"org.apache.spark.scheduler.TaskSetManager": "ERROR",
                        "org.apache.spark.storage.BlockManager": "ERROR",
                        "org.apache.spark.executor.Executor": "FATAL"}


VERBOSE_LEVELS = ("INFO", "DEBUG", "TRACE", "ALL")


def console_log_levels(sc) -> ShutdownRaces | None:
    """A command's own session logs warnings and up, without Spark's copies of failed tasks'
    tracebacks; `--conf spark.log.level=...` sets the level instead (Spark applies it), and
    INFO or more verbose keeps every logger, the task failures' included. The shutdown races
    that Ctrl-C or SIGTERM will drop, where they are to be dropped."""
    asked = sc.getConf().get("spark.log.level", None)
    if asked is None:
        sc.setLogLevel("WARN")
    if (asked or "WARN").upper() not in VERBOSE_LEVELS:
        quiet_task_failures(sc)
        return quiet_shutdown_races(sc)
    return None


# What Spark logs, each with its stack trace, about tasks that end while their context stops
# under them: the scheduler's result pool already shut (a RejectedExecutionException), and an
# accumulator update whose connection to the driver was interrupted (ClosedByInterruptException),
# and a task releasing a broadcast block the stopping context removed ("Block broadcast_0 does not
# exist"; a reviewer): a listener's error also fails its task, which the command reports itself. A
# task starting as the context stops reads its broadcasts from a SparkEnv already gone: Utils' "Exception
# encountered" and a NullPointerException's 35 lines (SIGTERM to the build's process group as the tag
# stage started; found by a tester).
SHUTDOWN_RACES = ("Exception in statusUpdate", "Failed to update accumulator", "Error in TaskCompletionListener",
                  "Exception encountered")

_ARMED: list[ShutdownRaces] = []  # those of the sessions that running commands started


class ShutdownRaces:
    """Spark's shutdown races of a session the command started (`SHUTDOWN_RACES`, and the
    accumulator server's EOFError), dropped from the moment Ctrl-C or SIGTERM reaches the
    command. Until then the same messages are real errors (a TaskCompletionListener that fails
    for a reason of its own, a scheduler's failed status update): dropped for the whole session,
    they hid those from a running build (found by a tester). The accumulator server's closed
    connection goes too where the JVM the command launched has exited: the command's one line
    says that Spark stopped under it.

    The signal handlers (`shutting_down`) only wake this session's thread, which adds the filters:
    py4j answers no call from the main thread while its interrupted call waits (PySpark's own
    cancelAllJobs fails there), and a handler that takes locks (a thread's start) can deadlock.
    The command's `stopped` drops them itself, waiting for that thread, before it stops Spark."""

    WAIT_S = 10.0  # at most, for a JVM that does not answer: the command ends regardless
    JVM_EXIT_S = 2.0  # a JVM whose connection closed exits within it (its sockets close as it exits)

    def __init__(self, sc):
        self.sc = sc
        self.stopping = False  # Ctrl-C or SIGTERM reached the command
        self._dropped = False
        self._lock = threading.Lock()
        self._signalled = threading.Event()  # the signal came, or the command ended
        self._context = None
        self._filters: list = []
        self._sigint = None  # (PySpark's handler, the one that wraps it)
        self._server = None  # (the accumulator server, its handle_error, the one that wraps it)
        try:
            jvm = sc._jvm  # noqa: SLF001 - log4j2's configuration is reachable only through the JVM
            result = getattr(jvm, "org.apache.logging.log4j.core.Filter$Result")
            builder = jvm.org.apache.logging.log4j.core.filter.StringMatchFilter.newBuilder
            # made now, so that dropping is a few calls into a JVM that may be stopping already
            self._filters = [builder().setMatchString(text).setOnMatch(result.DENY).setOnMismatch(result.NEUTRAL)
                             .build() for text in SHUTDOWN_RACES]
            self._context = jvm.org.apache.logging.log4j.LogManager.getContext(False)
        except Exception:  # noqa: BLE001 - another logging backend: Spark's log stays as it was
            self._filters = []

    def arm(self) -> ShutdownRaces:
        """Ctrl-C (PySpark's SIGINT handler, wrapped) and SIGTERM (`exit_on_sigterm`) drop them."""
        import signal

        server = getattr(self.sc, "_accumulatorServer", None)  # noqa: SLF001 - PySpark's, in the driver's process
        if server is not None and hasattr(server, "handle_error"):
            report = server.handle_error

            def handle_error(request, client_address) -> None:
                # the JVM's end of the connection went away: because the signal reached it too, or
                # because it died (the command says so in one line); a JVM still there keeps the
                # traceback of what it sent (it logs its own "Failed to update accumulator")
                closed = isinstance(sys.exc_info()[1], (EOFError, ConnectionError))
                if not (closed and (self.stopping or self._jvm_exited())):
                    report(request, client_address)

            server.handle_error = handle_error
            self._server = (server, report, handle_error)
        previous = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is threading.main_thread() and callable(previous):
            def interrupted(signum, frame):
                shutting_down()
                return previous(signum, frame)

            signal.signal(signal.SIGINT, interrupted)
            self._sigint = (previous, interrupted)
        if self._filters:
            threading.Thread(target=self._drop_when_signalled, name="dolmino-shutdown-races", daemon=True).start()
        _ARMED.append(self)
        return self

    def _jvm_exited(self) -> bool:
        """The JVM this process launched (`dolmino build`) has exited. spark-submit's JVM is this
        process's parent: its end takes this process's output with it."""
        proc = launched_jvm(self.sc)
        return proc is not None and _exits_within(proc, self.JVM_EXIT_S)

    def _drop_when_signalled(self) -> None:
        self._signalled.wait()
        if self.stopping:
            self.drop()

    def signalled(self) -> None:
        """Ctrl-C or SIGTERM: safe in a signal handler (sets an event, calls nothing in the JVM)."""
        self.stopping = True
        self._signalled.set()

    def drop(self) -> None:
        """From now on, off the log: the filters go into the JVM's log4j configuration, once.
        They stay there after the command's stop: Spark, stopped by the signal in its own JVM,
        may still be ending tasks after that stop returned."""
        self.stopping = True
        if not self._lock.acquire(timeout=self.WAIT_S):
            return
        try:
            if self._dropped or not self._filters:
                return
            self._dropped = True
            config = self._context.getConfiguration()
            for log_filter in self._filters:
                config.addFilter(log_filter)
            self._context.updateLoggers()
        except Exception:  # noqa: BLE001 - the JVM went already: nothing of it is left to log
            pass
        finally:
            self._lock.release()

    def disarm(self) -> None:
        """The command ends: its thread ends, and Ctrl-C and the accumulator server are PySpark's again
        (a process that goes on with the session)."""
        import signal

        if self in _ARMED:
            _ARMED.remove(self)
        self._signalled.set()
        if self._server is not None:
            server, report, handle_error = self._server
            if server.handle_error is handle_error:
                server.handle_error = report
            self._server = None
        if self._sigint is not None and threading.current_thread() is threading.main_thread():
            previous, interrupted = self._sigint
            if signal.getsignal(signal.SIGINT) is interrupted:
                signal.signal(signal.SIGINT, previous)
            self._sigint = None


def shutting_down() -> None:
    """Ctrl-C or SIGTERM reached the command (called from its signal handlers): the shutdown races
    of its sessions are dropped from now on. The signal reaches spark-submit's JVM too, whose
    shutdown hook stops the context at once: the filters go in now, not once the interrupt has
    come out of the py4j call the command was waiting in (on a busy 2-core machine they were in
    20 to 50 ms after the signal; the stopped stage failed ~200 ms after it)."""
    for races in list(_ARMED):
        races.signalled()


def quiet_shutdown_races(sc) -> ShutdownRaces:
    """Keep Spark's own shutdown races off the console once Ctrl-C or SIGTERM stops the command.
    The signal reaches spark-submit's JVM too, whose shutdown hook stops the context under the
    running tasks (`dolmino build`'s JVM ignores SIGINT: the command's stop does it there): each
    task that then ended printed ~20 lines of Java stack, and the driver's accumulator server a
    Python traceback of the JVM's closed connection (EOFError), 20 to 90 lines around the
    command's one line (found by a tester). Nothing in them is the build's or the user's to act
    on: the rerun resumes. Dropped by message (log4j's levels are per logger, and these loggers
    log what matters too), and only from the signal on (`ShutdownRaces`); `--conf
    spark.log.level=INFO` keeps them."""
    return ShutdownRaces(sc).arm()


def quiet_task_failures(sc) -> None:
    """Keep Spark's copies of a failed task's traceback off the console: a damaged attribute
    file printed three tracebacks in ~120 lines of Spark's log before the command's one line
    (found by a tester). The command says the failure itself in one line (`executor_failure`),
    and an unexpected one with its traceback; Spark's one-line "Task 0 in stage 3.0 failed 4
    times; aborting job" stays, and a lost executor (TaskSchedulerImpl's error). The three loggers'
    other warnings go too (a task of very large size, a block spilled to disk): levels are per
    logger. On a cluster each executor's log (the Spark UI, the Worker's work directory) keeps
    the tracebacks, retries included; `--conf spark.log.level=INFO` keeps them on the console."""
    try:
        jvm = sc._jvm  # noqa: SLF001 - log4j2's levels are reachable only through the JVM
        level = jvm.org.apache.logging.log4j.Level
        for name, value in TASK_FAILURE_LOGGERS.items():
            jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, level.getLevel(value))
    except Exception:  # noqa: BLE001 - another logging backend: Spark's log stays as it was
        pass


class _Py4jSendFailures:
    """Drops py4j's "... while sending command." records (root logger, with a traceback each)."""

    def filter(self, record) -> bool:
        return not (record.name == "root" and str(record.msg).endswith(" while sending command."))


def quiet_py4j_send_failures() -> None:
    """py4j logs every failed call to the JVM with its traceback on the root logger: on Ctrl-C
    (PySpark's handler cancels the jobs through a connection the interrupted read broke) ~50
    lines came before the command's one-line message (found by a tester). The failure itself
    still reaches the command as an exception, which says it in one line."""
    import logging

    root = logging.getLogger()
    if not any(isinstance(f, _Py4jSendFailures) for f in root.filters):
        root.addFilter(_Py4jSendFailures())


def isolate_worker_imports(sc) -> None:
    """Python workers import this project, never a namesake in their working directory.

    PySpark starts workers with `python -m pyspark.daemon`, which puts the working directory
    (in local mode the driver's) first on sys.path: a user's own `filters.py` there replaced
    the project's `filters` package in every task (found by a tester). PYTHONSAFEPATH (Python
    3.11) leaves it out. A checkout run in place (not installed) joins the workers' PYTHONPATH,
    where the cwd used to find it; an installed project is in the workers' own environment
    (its site-packages on PYTHONPATH would go before the standard library)."""
    import dolmino

    sc.environment["PYTHONSAFEPATH"] = "1"
    root = os.path.dirname(os.path.dirname(os.path.abspath(dolmino.__file__)))
    if os.path.isfile(os.path.join(root, "pyproject.toml")):  # a checkout, not site-packages
        inherited = [p for p in sc.environment.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
        sc.environment["PYTHONPATH"] = os.pathsep.join([root, *inherited])


def forward_environment(sc, any_s3: bool, task_cpus: int | None = None) -> None:
    """Settings the executors' Python workers need: the S3 endpoint, and tokenizer threads.

    The tokenizer's Rust thread pool would otherwise start one thread per core in every
    Python worker: N workers x N threads on an N-core node. Each task gets the cores Spark
    reserved for it (spark.task.cpus, default 1).

    A setting the user gave the executors (`spark.executorEnv.KEY`) is kept: the driver's value
    replaced it, so executors that reach S3 at another address than the submitting machine (a
    port-forward on the driver, a VPC endpoint in the cluster) were sent to the driver's (a tester)."""
    if any_s3:
        from dolmino.s3 import without_userinfo

        conf = sc.getConf()
        for key in S3_ENDPOINT_ENV:
            if os.environ.get(key) and conf.get(f"spark.executorEnv.{key}") is None:
                # A password in an endpoint URL is of no use to botocore (dolmino.s3.client drops
                # it), and executor settings are shown in Spark's UI and event log.
                value = os.environ[key]
                sc.environment[key] = without_userinfo(value) if key.startswith("AWS_ENDPOINT_URL") else value
    cpus = task_cpus or int(sc.getConf().get("spark.task.cpus", "1"))
    sc.environment["RAYON_NUM_THREADS"] = str(cpus)
    sc.environment["TOKENIZERS_PARALLELISM"] = "true" if cpus > 1 else "false"
    sc.environment.setdefault("OMP_NUM_THREADS", str(cpus))


def parallelize_pickled(sc, items: list, slices: int | None = None):
    """An RDD of `items` (any picklable objects) in `slices` partitions, one per item by default.

    Each item is pickled here with the standard pickler and shipped as bytes: Spark's
    cloudpickle calls back into Python for every object it writes, which took 0.126 s of
    driver CPU for the 20,000 units of bench_scale's small-files set, against 0.056 s."""
    blobs = [pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL) for item in items]
    return sc.parallelize(blobs, slices or max(len(blobs), 1)).map(_unpickled)


def _unpickled(blob: bytes):
    """pickle.loads with the garbage collector paused: the 20,000 units of as many small files
    are ~80,000 new objects, none of them garbage, and the collections their allocations set
    off took half of the time to load them (0.052 s, 0.026 s paused)."""
    if not gc.isenabled():
        return pickle.loads(blob)
    gc.disable()
    try:
        return pickle.loads(blob)
    finally:
        gc.enable()


def is_local(sc) -> bool:
    return sc.master.startswith("local")


def _store(sc):
    """Spark's AppStatusStore (py4j), or None where this Spark does not expose it."""
    try:
        return sc._jsc.sc().statusStore()
    except Exception:  # noqa: BLE001 - metrics are optional; the build never depends on them
        return None


def _seq(seq) -> list:
    return [seq.apply(i) for i in range(seq.size())]


def cluster_info(sc) -> dict:
    """The master and the executors the build actually ran on (executors lost on the way included), and the
    cores each task was given (spark.task.cpus: the threads its tokenizer and scorers run on; not recorded, a
    report of `--conf spark.task.cpus=4` read as one of 1, found by a tester)."""
    info = {"spark_master": sc.master, "application_id": sc.applicationId,
            "default_parallelism": sc.defaultParallelism, "task_cpus": int(sc.getConf().get("spark.task.cpus", "1"))}
    store = _store(sc)
    try:
        executors = [(e.id(), e.hostPort(), e.totalCores()) for e in _seq(store.executorList(False))]
    except Exception:  # noqa: BLE001
        info["executors"] = None
        return info
    workers = [e for e in executors if e[0] != "driver"] or executors
    info["executors"] = len(workers)
    info["executor_cores"] = sum(int(cores) for _id, _host, cores in workers)
    info["executor_hosts"] = sorted({str(host).rsplit(":", 1)[0] for _id, host, _cores in workers})
    return info


def active_executor_cores(sc) -> list[int] | None:
    """The cores of each executor of a cluster now registered (the driver's own entry left out); None where
    the status store does not say."""
    try:
        return [int(e.totalCores()) for e in _seq(_store(sc).executorList(True)) if e.id() != "driver"]
    except Exception:  # noqa: BLE001 - a stopping context: nothing to say
        return None


def group_metrics(sc, group: str) -> dict | None:
    """Summed metrics of every stage attempt run under one job group (None if unknown)."""
    store = _store(sc)
    if store is None:
        return None
    gateway = sc._gateway
    tracker = sc.statusTracker()
    total = {"executor_run_s": 0.0, "executor_cpu_s": 0.0, "shuffle_write_bytes": 0, "shuffle_read_bytes": 0,
             "spilled_bytes": 0, "input_bytes": 0, "tasks": 0}
    try:
        jobs = settled_jobs(tracker, group)
        stage_ids = {sid for job in jobs for sid in job.stageIds}
        no_tasks, no_quantiles = gateway.jvm.java.util.ArrayList(), gateway.new_array(gateway.jvm.double, 0)
        for sid in sorted(stage_ids):
            for st in _seq(store.stageData(sid, False, no_tasks, False, no_quantiles)):
                if st.status().toString() not in ("COMPLETE", "FAILED"):
                    continue  # skipped (its shuffle output was reused) or never run
                total["executor_run_s"] += st.executorRunTime() / 1000
                total["executor_cpu_s"] += st.executorCpuTime() / 1e9
                total["shuffle_write_bytes"] += st.shuffleWriteBytes()
                total["shuffle_read_bytes"] += st.shuffleReadBytes()
                total["spilled_bytes"] += st.diskBytesSpilled() + st.memoryBytesSpilled()
                total["input_bytes"] += st.inputBytes()
                total["tasks"] += st.numCompleteTasks()
    except Exception:  # noqa: BLE001
        return None
    total["executor_run_s"] = round(total["executor_run_s"], 3)
    total["executor_cpu_s"] = round(total["executor_cpu_s"], 3)
    return total


def settled_jobs(tracker, group: str, wait_s: float = 5.0) -> list:
    """The group's jobs, once the status store has taken in their ends.

    Spark's listener bus updates the store after `collect()` has returned: read at once, the
    last stage of a job can still show as running and its figures would be left out."""
    deadline = time.monotonic() + wait_s
    while True:
        jobs = [job for job in map(tracker.getJobInfo, tracker.getJobIdsForGroup(group)) if job is not None]
        if all(str(job.status) not in ("RUNNING", "UNKNOWN") for job in jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(0.01)


def job_count(sc) -> int | None:
    """Spark jobs the session has run so far."""
    store = _store(sc)
    try:
        return store.jobsList(None).size()
    except Exception:  # noqa: BLE001
        return None


def persisted_bytes(sc, rdd) -> int | None:
    """Memory + disk bytes Spark holds for a persisted RDD (0 when nothing is stored; None if unknown).

    Asked of the block managers' master, which answers as of now; the status store learns of
    stored and dropped blocks through the listener bus, a moment late."""
    try:
        for info in sc._jsc.sc().getRDDStorageInfo():
            if info.id() == rdd.id():
                return int(info.memSize()) + int(info.diskSize())
    except Exception:  # noqa: BLE001 - metrics are optional; the build never depends on them
        return None
    return 0
