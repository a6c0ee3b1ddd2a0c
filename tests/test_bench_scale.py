"""bench/proctree.py's CPU accounting and bench/bench_scale.py's pool construction (no Spark, no timing)."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from bench import bench_scale, proctree

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"
# /proc/<pid>/stat truncates utime and stime to clock ticks each: a process that burnt 0.4 s
# can read 0.38 s
TICKS_LOST = 2 / proctree.CLOCK_TICKS


def test_tree_cpu_counts_a_child_while_it_runs_and_after_it_is_reaped():
    before = proctree.tree_cpu_s()
    code = BURN + "print('burnt', flush=True)\nimport sys; sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        # the child says when it has burnt its CPU (a loop on /proc's reading could wait forever
        # on a tick lost to truncation)
        assert child.stdout.readline().strip() == b"burnt"
        assert proctree.process_cpu_s(child.pid) >= 0.4 - TICKS_LOST
        assert child.pid in proctree.descendants() and child.pid in proctree.children_of(os.getpid())
        alive = proctree.tree_cpu_s() - before
    finally:
        child.communicate(b"")
    reaped = proctree.tree_cpu_s() - before  # now in this process's cutime
    assert alive >= 0.4 - TICKS_LOST and reaped >= 0.4 - TICKS_LOST
    assert child.pid not in proctree.descendants()


IGNORING_PARENT = """
import os, signal, sys, time
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # as PySpark's daemon: exited children are reaped unaccounted
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    t = time.process_time()
    while time.process_time() - t < 0.8:
        pass
    os.write(w, b"x")
    time.sleep(0.5)  # idle before exiting, as PySpark's idle workers are killed
    os._exit(0)
os.close(w)
os.read(r, 1)  # however slowly a loaded machine lets the grandchild burn its CPU
time.sleep(1.0)  # it exits meanwhile, still this process's child, reaped by nobody
"""


def test_meter_keeps_the_cpu_of_a_grandchild_that_was_reaped_unaccounted():
    before = proctree.tree_cpu_s()
    with proctree.CpuMeter(interval=0.05) as meter:
        subprocess.run([sys.executable, "-c", IGNORING_PARENT], check=True)
    result = meter.result()
    assert proctree.tree_cpu_s() - before < 0.45  # a plain before/after reading loses the grandchild
    # /proc counts clock ticks (10 ms): the 0.8 s burnt reads as >= 0.79
    assert result["total"] >= 0.75 and result["other"] + result["python_workers"] >= 0.75
    assert result["processes_seen"] >= 3 and result["meter_cpu_s"] >= 0


def test_stackexchange_split_cpu_keeps_a_worker_reaped_unaccounted():
    """bench_stackexchange read /proc twice with cutime around the split conversion, which loses
    an exited PySpark worker (its daemon ignores SIGCHLD; a reviewer): it meters like the build."""
    from bench import bench_stackexchange

    proc, seconds, cpu = bench_stackexchange._metered(
        lambda: subprocess.run([sys.executable, "-c", IGNORING_PARENT], check=True))
    assert proc.returncode == 0 and seconds > 0
    assert cpu["total"] >= 0.75 and cpu["other"] + cpu["python_workers"] >= 0.75


FORKED_WORKER = """
import os, sys
if os.fork() == 0:  # the daemon
    if os.fork() == 0:  # the worker it forks
        b = bytearray(64 << 20)
        b[::4096] = b"\\1" * len(b[::4096])
        print("ready", flush=True)
    sys.stdin.read()
    os._exit(0)
sys.stdin.read()
"""


def test_spark_peaks_tell_pysparks_daemon_from_the_workers_it_forks():
    """bench_dedup counts the daemon once and a worker once per core: they are told apart by
    parent (the JVM starts the daemon, the daemon forks the workers)."""
    jvm = subprocess.Popen([sys.executable, "-c", FORKED_WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert jvm.stdout.readline().strip() == b"ready"
        below = proctree.descendants(jvm.pid)
        assert len(below) == 2
        peaks = proctree.SparkProcesses(os.getpid(), [jvm.pid], below).peaks_mb()
        assert peaks["python_forked_worker_max_mb"] >= 64 > peaks["python_daemon_mb"] > 0
        assert peaks["python_worker_max_mb"] == peaks["python_forked_worker_max_mb"]
    finally:
        jvm.communicate(b"")


def test_peak_rss_reads_vmhwm_of_this_process():
    assert proctree.peak_rss_mb(os.getpid()) > 1.0
    assert proctree.peak_rss_mb(2**22 + 12345) == 0.0  # no such process


def test_cluster_memory_samples_the_peak_of_every_process_below_a_root_by_kind():
    # a grandchild that held 64 MB and let go of it: its VmHWM keeps the peak, and it is found
    # by descent (PySpark's daemon starts a process group of its own)
    code = ("import subprocess, sys\n"
            "subprocess.run([sys.executable, '-c', \"b = bytearray(64 << 20); del b; "
            "print('ready', flush=True); import sys; sys.stdin.read()\"], start_new_session=True)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"ready"
        peaks: dict = {}
        bench_scale._sample_peaks({"driver": (child.pid, True)}, peaks)
        assert child.pid in peaks and os.getpid() not in peaks
        grandchild = [pid for pid in peaks if pid != child.pid]
        assert len(grandchild) == 1
        name, kind, peak = peaks[grandchild[0]]
        assert (name, kind) == ("driver", "python") and peak >= 64
        assert peaks[child.pid][2] < peak
        peaks = {}
        bench_scale._sample_peaks({"driver": (child.pid, False)}, peaks)  # the root itself left out
        assert list(peaks) == grandchild
    finally:
        child.communicate(b"")


def test_cluster_memory_leaves_out_spark_class_launcher():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", bench_scale.SPARK_LAUNCHER],
                             stdin=subprocess.PIPE)
    try:
        peaks: dict = {}
        bench_scale._sample_peaks({"driver": (child.pid, True)}, peaks)  # Popen returns after the exec
        assert peaks == {}
    finally:
        child.communicate(b"")


def test_perturb_is_seeded_keeps_the_words_and_breaks_shingles():
    text = " ".join(f"word{i}" for i in range(400)) + "\n\tend"
    a = bench_scale.perturb(text, random.Random("s:1"))
    assert a == bench_scale.perturb(text, random.Random("s:1")) and a != text
    assert a != bench_scale.perturb(text, random.Random("s:2"))
    assert set(a.split()) <= set(text.split())  # only the document's own words
    assert a.count("\n") == 1 and a.count("\t") == 1  # whitespace kept
    changed = sum(x != y for x, y in zip(a.split(), text.split()))
    assert 0.05 * 400 < changed <= bench_scale.SWAP_RATE * 400
    # MinHash's 5-word shingles: well under the 0.8 Jaccard threshold
    shingles = lambda t: {tuple(t.split()[i:i + 5]) for i in range(len(t.split()) - 4)}  # noqa: E731
    sa, st = shingles(a), shingles(text)
    assert len(sa & st) / len(sa | st) < 0.6


def test_budget_makes_every_source_the_same_multiple_of_its_target():
    meta = {"sources": {"a": {"text_bytes": 1000, "tokens_per_byte": 0.3},
                        "b": {"text_bytes": 3000, "tokens_per_byte": 0.2}}}
    budget, mix = bench_scale.plan_budget(meta, 20.0)
    assert budget == int((300 + 600) / 20)
    assert mix == {"a": pytest.approx(100 * 300 / 900, abs=1e-3), "b": pytest.approx(100 * 600 / 900, abs=1e-3)}
    spec = bench_scale.manifest_dict(bench_scale.TMP, 4, budget, {name: 25.0 for name in bench_scale.SOURCES})
    assert all(len(s["paths"]) == 4 * bench_scale.FILES_PER_UNIT for s in spec["sources"])


def test_jvm_threads_sums_threads_by_name_without_digits():
    """bench/jvm_threads.py: a named thread of a child process (as the JVM names its compiler
    threads "C2 CompilerThread0", "...1") counts under one kind, with the CPU it burnt."""
    from bench import jvm_threads

    code = ("import ctypes, threading, time\n"
            "def burn():\n"
            "    ctypes.CDLL(None).prctl(15, b'Burner7', 0, 0, 0)  # PR_SET_NAME: this thread's comm\n"
            "    t = time.thread_time()\n"
            "    while time.thread_time() - t < 0.4: pass\n"
            "    print('burnt', flush=True); time.sleep(60)\n"
            "threading.Thread(target=burn, daemon=True).start(); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        before = {"Burner#": 0.0}
        assert child.stdout.readline().strip() == b"burnt"
        rows = dict(jvm_threads.spent(before, jvm_threads.thread_cpu(child.pid)))
    finally:
        child.kill()
        child.wait()
    assert rows["Burner#"] >= 0.4 - TICKS_LOST and "Burner7" not in rows
    assert list(rows) == sorted(rows, key=lambda n: -rows[n])
