"""Filter models and indexes shipped to executors (dolmino/build/resources.py).

`stage(..., ship=True)` is what a build does on any master but local mode: it sends a local
file or directory with SparkContext.addFile under a digest-carrying name, and `localize`
on the executor must find exactly those bytes. Spark's local mode runs the same addFile
and SparkFiles code paths, so these run without a cluster (tests/test_cluster.py covers
the cluster).
"""

from __future__ import annotations

import os

from dolmino.build.resources import localize, stage


def _localized_tree(spark, resource, cache: str) -> tuple[dict[str, bytes], set[str]]:
    """Run `localize` in a Spark task: the files it points at (relative name -> bytes), and its basename."""
    def task(_):
        os.environ["DOLMINO_CACHE"] = cache
        path = localize(resource)
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                return [("", os.path.basename(path), fh.read())]
        out = []
        for d, _dirs, files in os.walk(path):
            for f in files:
                full = os.path.join(d, f)
                with open(full, "rb") as fh:
                    out.append((os.path.relpath(full, path), os.path.basename(path), fh.read()))
        return out

    rows = spark.sparkContext.parallelize([0], 1).flatMap(task).collect()
    return {rel: data for rel, _name, data in rows}, {name for _rel, name, _data in rows}


def test_shipped_files_keep_their_digest_names_and_bytes(spark, tmp_path):
    """Two different files both called model.bin: each executor copy holds its own bytes."""
    a, b = tmp_path / "a" / "model.bin", tmp_path / "b" / "model.bin"
    a.parent.mkdir()
    b.parent.mkdir()
    a.write_bytes(b"model A" * 1000)
    b.write_bytes(b"model B" * 1000)
    ra, rb = stage(str(a), spark.sparkContext, ship=True), stage(str(b), spark.sparkContext, ship=True)
    assert ra.shipped_as != rb.shipped_as and ra.shipped_as.endswith("-model.bin")
    for resource, path in ((ra, a), (rb, b)):
        files, names = _localized_tree(spark, resource, str(tmp_path / "cache"))
        assert files == {"": path.read_bytes()}
        assert names == {resource.shipped_as}


def test_a_second_build_of_a_session_ships_the_same_model_once(tmp_path):
    """Spark's file server takes one path per name: the second build of a long-lived session on a
    cluster staged the same model under the same name at a new path, and addFile failed the build
    ("already registered with a different path"; found by a tester). Local mode ships nothing, so
    the fake context below enforces Spark's rule."""
    class Context:
        applicationId = "app-1"
        files: dict = {}

        def addFile(self, path):
            name = os.path.basename(path)
            if self.files.setdefault(name, path) != path:
                raise RuntimeError(f"File {name} was already registered with a different path")

    model = tmp_path / "model.bin"
    model.write_bytes(b"weights" * 100)
    context = Context()
    first, again = stage(str(model), context, ship=True), stage(str(model), context, ship=True)
    assert first == again and list(context.files) == [first.shipped_as]
    model.write_bytes(b"retrained" * 100)  # other bytes: another name, shipped too
    assert stage(str(model), context, ship=True).shipped_as != first.shipped_as and len(context.files) == 2


def test_shipped_directory_is_unpacked_into_the_node_cache(spark, tmp_path):
    model = tmp_path / "classifier"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"labels": 6}')
    (model / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    resource = stage(str(model), spark.sparkContext, ship=True)
    assert resource.is_dir and resource.shipped_as.endswith("-classifier.tar")
    cache = tmp_path / "cache"
    files, names = _localized_tree(spark, resource, str(cache))
    assert files == {"config.json": b'{"labels": 6}', os.path.join("sub", "weights.bin"): bytes(range(256)) * 64}
    assert names == {"classifier"}
    unpacked = list(cache.glob("resources/*/classifier"))
    assert len(unpacked) == 1 and list(cache.glob(f"resources/*/classifier.sha256-{resource.sha256[:16]}.ok"))
    again, _ = _localized_tree(spark, resource, str(cache))  # the second task reuses the node's copy
    assert again == files


def test_a_copy_that_fails_its_check_is_not_cached(s3_server, tmp_path, monkeypatch):
    """Found by a tester: an s3:// model replaced after the driver hashed it was cached on the node
    under the driver's digest; every later build there failed on it, also once the object was
    right again. The fetched copy is checked before it takes the cache's name (and a wrong copy an
    earlier version cached is fetched again)."""
    import uuid

    import pytest

    from dolmino import s3
    from dolmino.errors import BuildError

    monkeypatch.setenv("DOLMINO_CACHE", str(tmp_path / "cache"))
    bucket = f"res-{uuid.uuid4().hex[:12]}"
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="m.bin", Body=b"model A" * 100)
    resource = stage(f"s3://{bucket}/m.bin")  # the driver hashes A
    client.put_object(Bucket=bucket, Key="m.bin", Body=b"model B" * 100)  # replaced during the build
    with pytest.raises(BuildError, match="nothing was cached, a rerun fetches it again"):
        localize(resource)
    client.put_object(Bucket=bucket, Key="m.bin", Body=b"model A" * 100)  # put right
    path = localize(resource)
    assert open(path, "rb").read() == b"model A" * 100
    with open(path, "wb") as fh:  # what an earlier version left: a wrong copy under the digest's name
        fh.write(b"model B" * 100)
    for marker in (tmp_path / "cache").rglob("*.ok"):
        marker.unlink()
    assert open(localize(resource), "rb").read() == b"model A" * 100


def test_the_driver_removes_its_staged_copies_when_it_exits(tmp_path):
    """Every build that shipped a local model or index left a `dolmino-ship-*` directory in the
    driver's temporary directory: a hard link, or a full copy where that is another filesystem
    (347 of them in one /tmp; found by a tester). One directory per driver process, removed
    when it exits; each build stages afresh inside it (a link an earlier build made shares the
    inode of a model edited in place since: other bytes under the old digest; a reviewer)."""
    import subprocess
    import sys

    model = tmp_path / "model.bin"
    model.write_bytes(b"weights" * 100)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = f"""
from dolmino.build.resources import stage
class Context:
    def addFile(self, path):
        print(path, open(path, "rb").read(7).decode())
first = stage({str(model)!r}, Context(), ship=True)
with open({str(model)!r}, "r+b") as fh:
    fh.write(b"WEIGHTS")  # retrained in place: the same inode
again = stage({str(model)!r}, Context(), ship=True)
assert first.sha256 != again.sha256
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(tmp)}, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr
    (first, first_bytes), (again, again_bytes) = (line.split() for line in proc.stdout.splitlines())
    assert first != again and (first_bytes, again_bytes) == ("weights", "WEIGHTS")
    assert os.path.dirname(os.path.dirname(first)) == os.path.dirname(os.path.dirname(again))  # one per process
    assert first.startswith(str(tmp)) and list(tmp.iterdir()) == []
    assert model.read_bytes().startswith(b"WEIGHTS")  # hard links removed, not the model


def test_a_killed_drivers_staging_is_removed_by_the_next_driver(tmp_path):
    """A SIGKILLed driver runs no exit handler: the next driver removes staging directories whose
    owner lock is free (their driver ended) and no other: not a running driver's, also where PIDs
    say nothing (another PID namespace sharing /tmp; a reviewer), not one without an owner file."""
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    repo = os.path.dirname(os.path.dirname(__file__))
    stage = "from dolmino.build.resources import _staging_dir; import time; print(_staging_dir(), flush=True); "
    live = subprocess.Popen([sys.executable, "-c", stage + "time.sleep(120)"], env=env, cwd=repo,
                            stdout=subprocess.PIPE, text=True)
    # A driver in another PID namespace: its directory names a PID this one does not see running.
    import socket

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    elsewhere = tmp_path / f"dolmino-ship-{socket.gethostname()}-{gone}-abcd1234"
    hold = ("import fcntl, os, sys, time; d = sys.argv[1]; os.mkdir(d); f = open(os.path.join(d, '.owner'), 'w'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)")
    other = subprocess.Popen([sys.executable, "-c", hold, str(elsewhere)], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "held"
    killed = subprocess.Popen([sys.executable, "-c", stage + "time.sleep(120)"], env=env, cwd=repo,
                              stdout=subprocess.PIPE, text=True)
    try:
        live_dir, killed_dir = live.stdout.readline().strip(), killed.stdout.readline().strip()
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        (tmp_path / "dolmino-ship-old").mkdir()  # an earlier version's: no owner file
        other_host = tmp_path / "dolmino-ship-not-this-host-7-abcd1234"  # its locks may be host-local (NFS)
        other_host.mkdir()
        (other_host / ".owner").write_text("")
        new = subprocess.run([sys.executable, "-c", stage], env=env, cwd=repo, capture_output=True, text=True)
        assert new.returncode == 0, new.stderr
        time.sleep(0.1)
        assert os.path.isdir(live_dir) and not os.path.exists(killed_dir) and elsewhere.is_dir()
        assert (tmp_path / "dolmino-ship-old").is_dir() and not os.path.exists(new.stdout.strip())
        assert other_host.is_dir()
    finally:
        for proc in (live, other):
            proc.kill()
            proc.wait()


def test_a_terminated_build_runs_its_exit_handlers():
    """SIGTERM (`timeout`, a scheduler) killed the driver without its exit handlers: the staged
    copies stayed. The build's command turns it into SystemExit (Spark stopped, handlers run)."""
    import subprocess
    import sys

    script = """
import atexit, os, signal
from dolmino.build.spark import exit_on_sigterm
atexit.register(print, "handlers ran")
exit_on_sigterm()
os.kill(os.getpid(), signal.SIGTERM)
signal.pause()
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 143 and proc.stdout == "handlers ran\n", proc


def test_a_node_whose_cache_cannot_be_made_is_one_line(s3_server, tmp_path, monkeypatch):
    """A DOLMINO_CACHE below a file (or read-only) failed the task with two Spark tracebacks and a
    2,000-character line naming no setting (found by a tester): one line naming the node, the
    cache and the variable, which the build's executor_failure turns into its error line."""
    import uuid

    import pytest

    from dolmino import s3
    from dolmino.build.cli import executor_failure
    from dolmino.errors import BuildError

    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("DOLMINO_CACHE", str(tmp_path / "file" / "sub"))
    bucket = f"res-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    s3.client().put_object(Bucket=bucket, Key="m.bin", Body=b"model" * 10)
    with pytest.raises(BuildError) as exc:
        localize(stage(f"s3://{bucket}/m.bin"))
    line = str(exc.value)
    assert line.startswith(f"s3://{bucket}/m.bin: node ")
    assert f"cannot use its cache {tmp_path / 'file' / 'sub'}" in line
    assert "set DOLMINO_CACHE on the executors to a writable directory" in line

    class PythonException(Exception):  # what a failed task raises on the driver, by name
        pass

    said = executor_failure(PythonException(f"Traceback ...\ndolmino.errors.BuildError: {line}\n"))
    assert said == f"in an executor: BuildError: {line}"


def test_a_forked_child_leaves_its_parents_staging_alone(tmp_path):
    """The exit handler was inherited by a forked child: its normal exit removed the directory its
    parent still served files from (found by a reviewer)."""
    import subprocess
    import sys

    script = """
import os, sys, time
from dolmino.build.resources import _staging_dir
path = _staging_dir()
pid = os.fork()
if pid == 0:
    sys.exit(0)
os.waitpid(pid, 0)
print(os.path.isdir(path))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TMPDIR": str(tmp_path)}, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc
    assert list(tmp_path.iterdir()) == []  # the parent's exit removed it


def test_a_model_downloaded_again_keeps_its_digest(s3_server, tmp_path, monkeypatch):
    """`hf download --local-dir` (README's way to fetch the FineWeb-Edu classifier) writes
    `.cache/huggingface/download/<file>.metadata`, with the time of the download, into the model's
    directory: one model downloaded twice had two digests, so its attribute sets were scored
    again (found by a tester, a BERT pass over the DCLM pool). Hidden names are no part of a
    directory's digest, local or on S3; a model file changed still is."""
    import uuid
    from pathlib import Path

    from dolmino import s3

    model = tmp_path / "fineweb-edu-classifier"
    model.mkdir()
    files = {"config.json": b'{"num_labels": 1}', "model.safetensors": bytes(range(256)) * 16, "tokenizer.json": b"{}"}
    for name, data in files.items():
        (model / name).write_bytes(data)
    clean = stage(str(model)).sha256
    download = model / ".cache" / "huggingface" / "download"
    download.mkdir(parents=True)
    (model / ".cache" / "huggingface" / ".gitignore").write_text("*\n")
    digests = []
    for when in ("1733500000.1", "1733590000.7"):  # the same files, downloaded twice
        for name in files:
            (download / f"{name}.metadata").write_text(f"0123abcd\n\"etag-{name}\"\n{when}\n")
            (download / f"{name}.lock").write_text("")
        digests.append(stage(str(model)).sha256)
    assert digests == [clean, clean]

    monkeypatch.setenv("DOLMINO_CACHE", str(tmp_path / "cache"))
    bucket = f"res-{uuid.uuid4().hex[:12]}"
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    for path in model.rglob("*"):  # as `aws s3 sync` copies the directory: hidden files too
        if path.is_file():
            client.put_object(Bucket=bucket, Key=f"models/fwe/{path.relative_to(model).as_posix()}",
                              Body=path.read_bytes())
    remote = stage(f"s3://{bucket}/models/fwe")
    assert remote.sha256 == clean and remote.is_dir
    local = localize(remote)  # the executor's copy passes the digest check
    assert {p.name: p.read_bytes() for p in Path(local).iterdir() if p.is_file()} == files

    (model / "config.json").write_bytes(b'{"num_labels": 6}')
    assert stage(str(model)).sha256 != clean


def test_a_cached_copy_changed_between_builds_is_fetched_again(s3_server, tmp_path, monkeypatch):
    """The node's marker held the digest alone: a cached model (or a file of a model directory)
    changed or cut after one build checked it was scored with by the next build unsaid (found by
    a tester, a copy edited in an executor's cache between two builds on a cluster). The marker
    records each file's size and mtime too; a copy that differs from it is hashed again, and
    fetched again when its digest is not the driver's."""
    import uuid

    from dolmino import s3

    monkeypatch.setenv("DOLMINO_CACHE", str(tmp_path / "cache"))
    bucket = f"res-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    s3.client().put_object(Bucket=bucket, Key="m.bin", Body=b"model A" * 100)
    s3.client().put_object(Bucket=bucket, Key="dir/config.json", Body=b'{"labels": 6}')
    s3.client().put_object(Bucket=bucket, Key="dir/weights.bin", Body=b"weights" * 100)
    file_model, dir_model = stage(f"s3://{bucket}/m.bin"), stage(f"s3://{bucket}/dir")
    path, directory = localize(file_model), localize(dir_model)
    assert localize(file_model) == path  # a second task: the node's checked copy
    with open(path, "r+b") as fh:  # the same size, other bytes
        fh.write(b"model B")
    with open(os.path.join(directory, "weights.bin"), "wb") as fh:  # cut short
        fh.write(b"weights")
    assert open(localize(file_model), "rb").read() == b"model A" * 100
    assert open(os.path.join(localize(dir_model), "weights.bin"), "rb").read() == b"weights" * 100


def test_a_download_without_credentials_names_the_model(s3_server, tmp_path, monkeypatch):
    """An executor without the AWS credentials the driver had (a worker started without them, no
    spark.executorEnv.*) ended the build with `in an executor: NoCredentialsError: Unable to locate
    credentials`, naming neither the model nor what to set (found by a tester on a standalone
    cluster). The download names the object and the fix, as the driver's hashing does."""
    import uuid

    import pytest

    from dolmino import s3
    from dolmino.s3 import S3ObjectError

    monkeypatch.setenv("DOLMINO_CACHE", str(tmp_path / "cache"))
    bucket = f"res-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    s3.client().put_object(Bucket=bucket, Key="m.bin", Body=b"model" * 10)
    resource = stage(f"s3://{bucket}/m.bin")  # the driver has credentials
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(S3ObjectError) as exc:
        localize(resource)
    assert str(exc.value).startswith(f"s3://{bucket}/m.bin: no usable S3 credentials (NoCredentialsError)")
    assert "AWS_ACCESS_KEY_ID" in str(exc.value)


def test_a_node_cache_that_fills_while_it_copies_is_one_line_and_keeps_nothing(tmp_path, monkeypatch):
    """A DOLMINO_CACHE on a disk that fills while a model or index is copied in: the task ended in
    "in an executor: OSError: [Errno 28] No space left on device", naming neither the cache nor the
    setting (found by a tester)."""
    import errno

    import pytest

    from dolmino.build import resources
    from dolmino.errors import BuildError

    monkeypatch.setenv("DOLMINO_CACHE", str(tmp_path / "cache"))

    def fill(dest):
        with open(dest, "wb") as fh:
            fh.write(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    resource = resources.Resource("s3://b/m.bin", "0" * 64, False)
    with pytest.raises(BuildError) as info:
        resources._in_cache(resource, fill)
    line = str(info.value)
    assert line.startswith("s3://b/m.bin: node ") and f"its cache {tmp_path / 'cache'} (No space left" in line
    assert "set DOLMINO_CACHE on the executors to a directory with room" in line
    assert [p.name for p in (tmp_path / "cache" / "resources" / ("0" * 32)).iterdir()] == [".lock"]


def test_a_node_cache_remounted_read_only_while_it_copies_is_not_told_to_free_space(tmp_path, monkeypatch):
    """The line of a full cache ("free space there ... a directory with room") was said of a read-only one
    too, where there is nothing to free (a reviewer)."""
    import errno

    import pytest

    from dolmino.build import resources
    from dolmino.errors import BuildError

    monkeypatch.setenv("DOLMINO_CACHE", str(tmp_path / "cache"))

    def fill(dest):
        raise OSError(errno.EROFS, "Read-only file system", dest)

    with pytest.raises(BuildError) as info:
        resources._in_cache(resources.Resource("s3://b/m.bin", "1" * 64, False), fill)
    line = str(info.value)
    assert "(Read-only file system); make it writable or set DOLMINO_CACHE on the executors to a writable " \
           "directory (default ~/.cache/dolmino)" in line, line
    assert "free space" not in line and "room" not in line, line


def test_a_model_staged_into_a_full_temporary_directory_says_what_to_do(tmp_path, monkeypatch):
    """The driver's copy of a model or index to ship, into a full temporary directory: "cannot stage it for the
    executors in /tmp/dolmino-ship-.../tmpv6egeli3 ([Errno 28] No space left on device: '<model>' -> '<...>.part')",
    neither what to free nor which setting moves it (a tester, TMPDIR on a 64 KB tmpfs, a 150 MB index). One the
    driver's user may not write into was told to "make it writable": what to do is s3.place_remedy's, as for every
    other place the driver cannot write."""
    import errno
    import tempfile

    import pytest

    import dolmino.build.resources as resources
    from dolmino.errors import BuildError

    def full(uri, staging, _is_dir):
        raise OSError(errno.ENOSPC, "No space left on device", uri, staging + ".part")

    class Context:
        applicationId = "app-full"

        def addFile(self, path):
            raise AssertionError(f"{path} shipped")

    monkeypatch.setattr(resources, "_put_staged", full)
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    with pytest.raises(BuildError) as raised:
        stage(str(model), Context(), ship=True)
    assert str(raised.value) == (
        f"{model}: cannot stage it for the executors in the driver's temporary directory {tempfile.gettempdir()} "
        "(No space left on device); free space there or set TMPDIR on the driver to a disk with room, then rerun "
        "the same command")

    def forbidden(_uri, staging, _is_dir):
        raise OSError(errno.EACCES, "Permission denied", staging + ".part")

    monkeypatch.setattr(resources, "_put_staged", forbidden)
    with pytest.raises(BuildError) as raised:
        stage(str(model), Context(), ship=True)
    assert str(raised.value).endswith(f"{tempfile.gettempdir()} (Permission denied); give this user access to it or "
                                      "set TMPDIR on the driver to a writable directory, then rerun the same command")
