"""CPU time and peak memory of a process tree, read from /proc (Linux), for honest core-seconds.

A Spark build in local mode is several processes: the driver's Python (this process), the
JVM it starts (driver and executor in one), PySpark's worker daemon and the Python workers
it forks. Timing only the driver, or only the Python work inside tasks, leaves most of the
cost out.

`CpuMeter` is the measurement to use around a phase. It samples every process of the tree
every `interval` seconds (walking /proc/<pid>/task/*/children from this process, so it
never scans all of /proc) and remembers, per process (pid + start time), its own
utime + stime when first and last seen. The phase's CPU is the sum of (last - first) over
every process seen, by role (driver Python, JVM, Python workers, other). Sampling is needed
because PySpark's daemon sets SIGCHLD to SIG_IGN: a worker that exits (PySpark kills
workers idle for a minute, and starts new ones) is reaped by the kernel and its CPU time
is added to no parent's cutime, so reading the tree twice (`tree_cpu_s`) would lose it (and
count a worker alive at the start and gone at the end as negative time). What the meter
misses: a process born and dead between two samples, and a process's CPU between its last
sample and its exit (workers are killed when idle, so this is ~0). The sampler thread's own
CPU is measured and taken out of the driver's figure.

`tree_cpu_s()` (own + reaped children's time of every process in the tree, read once) is
still right where no process of the tree ignores SIGCHLD, e.g. a subprocess run to its end.

Peak memory is VmHWM (the resident-set high-water mark) of each process; writing "5" to
/proc/<pid>/clear_refs resets it, so one session can measure several builds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return text.rsplit(")", 1)[1].split()


def children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int | None = None) -> list[int]:
    """Every process below `pid` (default: this one), not including it."""
    pid = os.getpid() if pid is None else pid
    children = children_map()
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def children_of(pid: int) -> list[int]:
    """Direct children of one process from /proc/<pid>/task/*/children (cheap: no scan of /proc)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return out


def process_cpu_s(pid: int, with_children: bool = True) -> float:
    """utime + stime (+ cutime + cstime) of one process, in seconds; 0 when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # After the ")": state is fields[0], so utime/stime/cutime/cstime (stat fields 14-17) are [11:15].
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def tree_cpu_s(pid: int | None = None) -> float:
    """CPU seconds of `pid` (default: this process) and all its descendants, reaped children included."""
    pid = os.getpid() if pid is None else pid
    return sum(process_cpu_s(p) for p in [pid, *descendants(pid)])


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def process_kind(command: str) -> str | None:
    """"jvm" or "python" for a Spark process's command line (cmdline), else None."""
    head = command.split(" ", 1)[0]
    if head.endswith("java"):
        return "jvm"
    if "pyspark" in command or os.path.basename(head).startswith("python"):
        return "python"
    return None


def self_peak_rss_mb() -> float:
    """This process's resident high-water mark since it started (VmHWM), in MiB.

    Not getrusage(RUSAGE_SELF).ru_maxrss: Linux carries the parent's high-water mark across
    fork + exec into the child's, so a small child of a large bench process reports the
    parent's size (checked here: a child of a 1.5 GB process reported 1,513 MiB, its own VmHWM
    13 MiB). Falls back to ru_maxrss where /proc is missing.
    """
    import os
    import resource

    peak = peak_rss_mb(os.getpid())
    return peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_rss_mb(pid: int) -> float:
    """VmHWM of one process in MiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not permitted."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class SparkProcesses:
    """The processes of a local-mode Spark session started from this Python process."""

    driver_python: int
    jvm: list[int]
    python_workers: list[int]  # PySpark's daemon and the workers it forked

    @classmethod
    def find(cls) -> "SparkProcesses":
        me = os.getpid()
        jvm, workers = [], []
        for pid in descendants(me):
            kind = process_kind(cmdline(pid))
            if kind == "jvm":
                jvm.append(pid)
            elif kind == "python":
                workers.append(pid)
        return cls(me, jvm, workers)

    def peaks_mb(self) -> dict:
        jvm = sum(peak_rss_mb(p) for p in self.jvm)
        driver = peak_rss_mb(self.driver_python)
        workers = [peak_rss_mb(p) for p in self.python_workers]
        # The JVM starts PySpark's daemon, which forks the workers: telling them apart lets a
        # figure count the daemon once and the workers once per core.
        daemon = [(fields := _stat_fields(p)) is not None and int(fields[1]) in self.jvm for p in self.python_workers]
        return {"driver_python_mb": round(driver, 1), "jvm_mb": round(jvm, 1),
                "driver_total_mb": round(driver + jvm, 1),
                "python_worker_max_mb": round(max(workers, default=0.0), 1), "python_processes": len(workers),
                "python_daemon_mb": round(sum(w for w, d in zip(workers, daemon) if d), 1),
                "python_forked_worker_max_mb": round(max((w for w, d in zip(workers, daemon) if not d),
                                                         default=0.0), 1)}

    def reset_peaks(self) -> bool:
        return all(reset_peak_rss(p) for p in [self.driver_python, *self.jvm, *self.python_workers])


def _start_time(fields: list[str]) -> int:
    return int(fields[19])  # stat field 22, after the ")": index 19


def _role(pid: int, root: int) -> str:
    if pid == root:
        return "driver_python"
    kind = process_kind(cmdline(pid))
    return {"jvm": "jvm", "python": "python_workers"}.get(kind, "other")


class CpuMeter:
    """`with CpuMeter() as m: ...` then `m.result()`: CPU s by role of every process of this tree.

    See the module docstring for why it samples. The result also has `workers_started`
    (Python workers first seen during the span) and `processes_seen`."""

    ROLES = ("driver_python", "jvm", "python_workers", "other")

    def __init__(self, interval: float = 0.2, root: int | None = None):
        import threading

        self.interval = interval
        self.root = os.getpid() if root is None else root
        self.first: dict[tuple[int, int], float] = {}
        self.last: dict[tuple[int, int], float] = {}
        self.roles: dict[tuple[int, int], str] = {}
        self.initial: set[tuple[int, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)
        self._own_cpu = 0.0
        self._children_cache: dict[int, tuple[float, list[int]]] = {}

    def _kids(self, pid: int, now: float) -> list[int]:
        # The JVM has ~150 threads, each with its own children file: list them once a second.
        cached = self._children_cache.get(pid)
        if cached is not None and now - cached[0] < 1.0 and self.roles.get(self._key_of.get(pid)) == "jvm":
            return cached[1]
        kids = children_of(pid)
        self._children_cache[pid] = (now, kids)
        return kids

    def sample(self) -> None:
        import time as _time

        now = _time.monotonic()
        todo, seen = [self.root], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            fields = _stat_fields(pid)
            if fields is None:
                continue
            key = (pid, _start_time(fields))
            cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            if key not in self.roles:
                self.roles[key] = _role(pid, self.root)
                self.first[key] = cpu if self._started is False else 0.0
            self._key_of[pid] = key
            self.last[key] = cpu
            todo.extend(self._kids(pid, now))

    def __enter__(self) -> "CpuMeter":
        self._key_of: dict[int, tuple[int, int]] = {}
        self._started = False
        self.sample()  # what each process had already used counts as its start
        self.initial = set(self.roles)
        self._started = True
        self._thread.start()
        return self

    def _run(self) -> None:
        import time as _time

        t0 = _time.thread_time()
        while not self._stop.wait(self.interval):
            self.sample()
        self._own_cpu = _time.thread_time() - t0

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def result(self) -> dict:
        out = {role: 0.0 for role in self.ROLES}
        for key, role in self.roles.items():
            out[role] += self.last[key] - self.first[key]
        out["driver_python"] -= self._own_cpu
        out = {k: round(v, 3) for k, v in out.items()}
        out["total"] = round(sum(out[r] for r in self.ROLES), 3)
        out["meter_cpu_s"] = round(self._own_cpu, 3)
        out["workers_started"] = sum(1 for k, r in self.roles.items() if r == "python_workers" and k not in self.initial)
        out["processes_seen"] = len(self.roles)
        return out
