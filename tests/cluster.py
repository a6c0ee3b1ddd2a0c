"""A Spark standalone cluster on localhost, started from pyspark's own launcher, for tests.

`StandaloneCluster` runs `spark-class ...deploy.master.Master` and N
`spark-class ...deploy.worker.Worker` processes, as an operator starts them on real nodes:
each worker has its own work directory, its own SPARK_LOCAL_DIRS and its own resource cache
(DOLMINO_CACHE), and an environment given by the test (the S3 endpoint and credentials a
node would have from its instance role, the Python that runs the code). A worker may run in
a private mount namespace with a tmpfs over a directory of the driver's (`hidden`), so the
driver's files there are invisible to it, as they are to a node of a real cluster.

Every process starts in its own session (process group): `stop()` ends each group
(SIGTERM, then SIGKILL), which takes the executors and Python workers that a worker
launched with it. Waits are bounded; a process that dies while starting fails the start
with the tail of its log.

`submit(...)` runs spark-submit the same way (own process group, bounded, killed on
timeout) and returns its exit code, stdout and stderr.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pyspark

SPARK_HOME = Path(pyspark.__file__).resolve().parent
SPARK_CLASS = SPARK_HOME / "bin" / "spark-class"
SPARK_SUBMIT = SPARK_HOME / "bin" / "spark-submit"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
EXECUTOR_CLASS = "org.apache.spark.executor.CoarseGrainedExecutorBackend"

_LIVE: list["Daemon"] = []  # every daemon started in this interpreter, stopped at exit at the latest


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 (the daemon binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unshare_usable() -> str | None:
    """None when this process may run a command in a private mount namespace with a tmpfs, else why not."""
    if os.geteuid() != 0:
        return "not running as root: a private mount namespace needs CAP_SYS_ADMIN"
    if not shutil.which("unshare"):
        return "no `unshare` binary"
    probe = Path(f"/tmp/dolmino-unshare-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               f"mount -t tmpfs tmpfs {probe} && touch {probe}/inside"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    finally:
        inside = (probe / "inside").exists()
        shutil.rmtree(probe, ignore_errors=True)
    if proc.returncode != 0:
        return f"unshare --mount is not permitted here: {proc.stderr.strip()[:200]}"
    if inside:
        return "unshare ran but the tmpfs was not private"
    return None


def kill_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group of `proc` (started with start_new_session), then SIGKILL.

    Returns once the leader is reaped and no process of the group is left (executors and
    Python workers a daemon launched are in its group), or after the last bounded wait."""
    pgid = proc.pid  # a session leader's group id is its pid
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + wait
        while time.time() < deadline:
            if proc.poll() is not None and not _group_alive(pgid):
                return
            time.sleep(0.1)
    proc.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen
    log: Path

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        kill_group(self.proc)
        if self in _LIVE:
            _LIVE.remove(self)


def _stop_all() -> None:
    for daemon in list(_LIVE):
        daemon.stop()


atexit.register(_stop_all)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry))
    return out


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Worker:
    index: int
    home: Path  # work dir, local dirs, cache and log live under it
    daemon: Daemon | None = None
    private: bool = False  # runs in its own mount namespace with a tmpfs over the cluster's `hidden` dir

    @property
    def work_dir(self) -> Path:
        return self.home / "work"

    @property
    def local_dir(self) -> Path:
        return self.home / "local"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    def executor_pids(self) -> list[int]:
        """Executor JVMs this worker launched (children of its JVM)."""
        if self.daemon is None:
            return []
        return [p for p in children(self.daemon.proc.pid) if EXECUTOR_CLASS in cmdline(p)]


@dataclass
class StandaloneCluster:
    root: Path
    env: dict  # environment of the master and workers (and nothing of the test process's)
    workers: int = 2
    private: tuple[int, ...] = ()  # indexes of workers that run in a private mount namespace
    hidden: Path | None = None  # the directory those workers see as an empty tmpfs
    cores: int = 1
    memory: str = "1g"
    start_timeout_s: float = 300.0
    master: Daemon | None = None
    master_url: str = ""
    webui_url: str = ""
    nodes: list[Worker] = field(default_factory=list)

    # ------------------------------------------------------------------ start / stop

    def _spawn(self, name: str, argv: list[str], env: dict) -> Daemon:
        log = self.root / f"{name}.log"
        fh = open(log, "ab")
        try:
            proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=str(self.root))
        finally:
            fh.close()
        daemon = Daemon(name, proc, log)
        _LIVE.append(daemon)
        return daemon

    def _base_env(self) -> dict:
        keep = {k: os.environ[k] for k in ("PATH", "JAVA_HOME", "LANG", "LC_ALL", "TZ") if k in os.environ}
        return {**keep, "HOME": str(self.root), "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
                **self.env}

    def start(self) -> "StandaloneCluster":
        """Master and workers start together (JVM start-up dominates on a small machine); workers
        retry their registration until the master is up."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            port, ui = free_port(), free_port()
            env = {**self._base_env(), "SPARK_LOCAL_DIRS": str(self.root / "master-local")}
            self.master = self._spawn("master", [str(SPARK_CLASS), MASTER_CLASS, "--host", "127.0.0.1", "--port",
                                                 str(port), "--webui-port", str(ui)], env)
            self.master_url, self.webui_url = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui}"
            for i in range(self.workers):
                self._start_worker(i)
            self.wait_for_workers(self.workers)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_worker(self, i: int) -> None:
        node = Worker(i, self.root / f"worker-{i}", private=i in self.private)
        for d in (node.work_dir, node.local_dir, node.cache_dir):
            d.mkdir(parents=True, exist_ok=True)
        env = {**self._base_env(), "SPARK_LOCAL_DIRS": str(node.local_dir), "DOLMINO_CACHE": str(node.cache_dir),
               "SPARK_WORKER_DIR": str(node.work_dir)}
        argv = [str(SPARK_CLASS), WORKER_CLASS, self.master_url, "--host", "127.0.0.1", "--port", "0",
                "--webui-port", "0", "--work-dir", str(node.work_dir), "--cores", str(self.cores),
                "--memory", self.memory]
        if node.private:
            if self.hidden is None:
                raise ValueError("a private worker needs `hidden`, the directory it must not see")
            quoted = " ".join(f"'{a}'" for a in argv)
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    f"mount -t tmpfs -o size=512m tmpfs '{self.hidden}' && exec {quoted}"]
        node.daemon = self._spawn(f"worker-{i}", argv, env)
        self.nodes.append(node)

    def wait_for_workers(self, n: int, timeout_s: float | None = None) -> None:
        deadline = time.time() + (timeout_s or self.start_timeout_s)
        while time.time() < deadline:
            if self.master.proc.poll() is not None:
                raise RuntimeError(f"the Spark master exited with {self.master.proc.returncode}:\n"
                                   f"{self.master.log_tail()}")
            for node in self.nodes:
                if node.daemon.proc.poll() is not None:
                    raise RuntimeError(f"worker {node.index} exited with {node.daemon.proc.returncode}:\n"
                                       f"{node.daemon.log_tail()}")
            state = self.state() or {}
            if sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE") >= n:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{n} workers did not register with {self.master_url} within the timeout:\n"
                           + "\n".join(node.daemon.log_tail(2000) for node in self.nodes))

    def stop(self) -> None:
        for node in self.nodes:
            if node.daemon is not None:
                node.daemon.stop()
        if self.master is not None:
            self.master.stop()

    # ------------------------------------------------------------------ what the master knows

    def state(self) -> dict | None:
        """The master's JSON status page (workers, active and completed applications), or None."""
        try:
            with urllib.request.urlopen(f"{self.webui_url}/json", timeout=5) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError):
            return None

    def wait_for_no_active_apps(self, timeout_s: float = 60.0) -> dict:
        """The master's state once no application is running (a killed driver's app ends here)."""
        deadline = time.time() + timeout_s
        state = None
        while time.time() < deadline:
            state = self.state() or {}
            if not state.get("activeapps"):
                return state
            time.sleep(0.5)
        raise RuntimeError(f"applications still active after {timeout_s}s: {state.get('activeapps')}")

    def wait_for_idle_workers(self, timeout_s: float = 60.0) -> None:
        """Until no executor or Python worker is left in any worker's process group."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            busy = [p for n in self.nodes if n.daemon for p in group_members(n.daemon.proc.pid)
                    if p != n.daemon.proc.pid]
            if not busy:
                return
            time.sleep(0.2)
        raise RuntimeError(f"processes still running under the workers after {timeout_s}s: {busy}")

    def logs(self) -> str:
        """Tail of every daemon's log, for an assertion message."""
        parts = [] if self.master is None else [f"--- master\n{self.master.log_tail(2000)}"]
        parts += [f"--- worker-{n.index}\n{n.daemon.log_tail(3000)}" for n in self.nodes if n.daemon]
        return "\n".join(parts)


# ---------------------------------------------------------------------------- spark-submit


@dataclass
class Submitted:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        """Both streams: spark-submit's PythonRunner sends the Python driver's stderr to its stdout."""
        return self.stdout + self.stderr


def submit_argv(master: str | None, script: str, args: list[str], conf: dict | None = None) -> list[str]:
    argv = [str(SPARK_SUBMIT)]
    if master:
        argv += ["--master", master]
    for key, value in (conf or {}).items():
        argv += ["--conf", f"{key}={value}"]
    return argv + [script, *args]


def start_submit(argv: list[str], env: dict, cwd: str, log_dir: Path, name: str) -> tuple[subprocess.Popen, Path, Path]:
    """spark-submit in its own process group; stdout/stderr go to files (a pipe could fill and block)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out, err = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return proc, out, err


def run_submit(argv: list[str], env: dict, cwd: str, log_dir: Path, name: str, timeout_s: float) -> Submitted:
    started = time.time()
    proc, out, err = start_submit(argv, env, cwd, log_dir, name)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise RuntimeError(f"spark-submit {name} ran past {timeout_s}s; stderr tail:\n"
                           f"{err.read_text(errors='replace')[-4000:]}") from None
    finally:
        if proc.poll() is None:
            kill_group(proc)
    return Submitted(proc.returncode, out.read_text(errors="replace"), err.read_text(errors="replace"),
                     time.time() - started)


# Short-lived JVMs (daemons, drivers and executors of small test builds) spend much of their
# CPU in the C2 JIT and the parallel GC's threads: C1 only and the serial GC halve the CPU of
# a small spark-submit on 2 cores (measured: 36.5 -> 19.3 s user). Nothing else changes.
SMALL_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def jvm_env() -> dict:
    """Every JVM started with this environment (and the executors a worker launches) uses SMALL_JVM_OPTIONS."""
    return {"JAVA_TOOL_OPTIONS": SMALL_JVM_OPTIONS}


def python_env() -> dict:
    """What spark-submit and the workers need to run this interpreter with this repo's code."""
    repo = str(Path(__file__).resolve().parents[1])
    return {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable, "PYTHONPATH": repo,
            "OMP_NUM_THREADS": "1"}
