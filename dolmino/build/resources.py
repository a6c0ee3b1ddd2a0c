"""Models and indexes that filters read (`*_path` parameters), made available on executors.

On a cluster the executors do not share the driver's disk, so a path the driver resolved is
never opened on an executor. Instead, on the driver:

- a local file or directory is hashed (SHA-256) and, unless Spark runs in local mode,
  shipped with `SparkContext.addFile` under a name that carries its digest (a directory as
  a tar archive: addFile refuses local directories outside local mode);
- an s3:// object (or prefix, for a model directory) is hashed by streaming it once.

On an executor, `localize` returns a local path: the shipped copy (a directory unpacked into
the cache), or a download into a per-node cache (`$DOLMINO_CACHE`, default
~/.cache/dolmino/resources) keyed by the digest.
Either way the bytes are checked against the driver's SHA-256 once per node (a marker file
records the check, and the size and mtime of what it checked: a copy changed since is checked
again), so every executor scores with exactly the model the driver saw.
Attribute sets are keyed by these digests, not by paths: moving a model does not re-tag,
changing it does.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import os
import shutil
import tarfile
import tempfile
from typing import NamedTuple

from dolmino.checksums import sha256_file, sha256_stream
from dolmino.errors import BuildError

HASH_CHUNK = 8 << 20


class Resource(NamedTuple):
    uri: str  # as the manifest names it: a local path or s3:// URI
    sha256: str  # of the file, or of a directory's (relative path, file digest) list
    is_dir: bool
    shipped_as: str | None = None  # SparkFiles name when shipped with addFile


def file_params(spec: dict) -> list[str]:
    return sorted(k for k, v in spec.items() if k.endswith("_path") and isinstance(v, str) and v)


def _digest_listing(entries: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for rel, digest in sorted(entries):
        h.update(f"{rel}\0{digest}\n".encode("utf-8"))
    return h.hexdigest()


def _hidden(rel: str) -> bool:
    """Whether a path below a model directory is a dotted name or lies under one, which no model
    loader reads: the `.cache/huggingface/` bookkeeping `hf download --local-dir` writes (a timestamp
    per file and download) made one model's digest differ with every download, and its attributes
    were scored again (found by a tester); a clone's `.git/` changes with every fetch."""
    return any(part.startswith(".") for part in rel.split("/"))


def _local_files(root: str) -> list[str]:
    """A model directory's files as its digest counts them: not the hidden ones (`_hidden`)."""
    found = []
    for d, dirs, files in os.walk(root):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        found.extend(os.path.relpath(os.path.join(d, f), root) for f in files if not f.startswith("."))
    return sorted(found)


def local_digest(path: str) -> tuple[str, bool]:
    if os.path.isdir(path):
        return _digest_listing([(rel, sha256_file(os.path.join(path, rel))) for rel in _local_files(path)]), True
    return sha256_file(path), False


def _s3_members(uri: str) -> tuple[list[tuple[str, str]], bool]:
    """[(relative name, key URI)] of an object, or of every object under a prefix."""
    from dolmino.s3 import iter_keys, join_uri, object_size, split_uri

    if object_size(uri) is not None:
        return [("", uri)], False
    bucket, key = split_uri(uri)
    prefix = key.rstrip("/") + "/"
    members = [(k[len(prefix):], join_uri(bucket, k)) for k, _ in iter_keys(bucket, prefix)
               if not k.endswith("/") and not _hidden(k[len(prefix):])]
    if not members:
        raise BuildError(f"{uri}: no such object or prefix")
    return members, True


def s3_digest(uri: str) -> tuple[str, bool]:
    """A failure names the object (S3ObjectError): a denied HEAD named neither the model nor
    its filter (found by a tester)."""
    from dolmino.s3 import about, open_uri

    with about(uri):
        members, is_dir = _s3_members(uri)
    digests = []
    for rel, member in members:
        with about(member), open_uri(member, "rb") as fh:
            digests.append((rel, sha256_stream(fh.read)))
    return (_digest_listing(digests) if is_dir else digests[0][1]), is_dir


_STAGING: list = []  # this driver process's staging directory and the open, locked owner file
_STAGING_PREFIX = "dolmino-ship-"
_OWNER = ".owner"  # locked (flock) while its driver runs: the kernel releases it when the process ends


def _host_prefix() -> str:
    import socket

    return f"{_STAGING_PREFIX}{socket.gethostname()}-"


def _sweep_dead_drivers(tmp: str) -> None:
    """Remove this host's staging directories whose driver no longer runs (killed: no exit
    handler ran). A driver holds an exclusive lock on its directory's owner file for its whole
    life, so the lock is free only once it has ended: a PID would not say so across PID
    namespaces (containers of one pod share a hostname and may share /tmp; a reviewer). Other
    hosts' directories (a /tmp shared over NFS, whose locks may be host-local) and directories
    without an owner file (being made, or older versions') are left alone."""
    prefix = _host_prefix()
    for entry in os.scandir(tmp):
        if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd = os.open(os.path.join(entry.path, _OWNER), os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its driver runs (or this filesystem has no locks: then never swept)
            os.close(fd)
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        os.close(fd)


def _remove_if_mine(path: str, pid: int) -> None:
    """The exit handler: a child forked from the driver inherits it, and its exit removed the
    directory its parent still served files from (a reviewer)."""
    if os.getpid() == pid:
        shutil.rmtree(path, ignore_errors=True)


def _staging_dir() -> str:
    """One directory per driver process for the files it ships, removed when the process exits
    (and by a later driver on the host when it was killed): Spark serves them from there to
    executors until its context stops, and each build left its own behind (a full copy of a
    model or index where the temporary directory is another filesystem; 347 of them in one
    /tmp; found by a tester)."""
    if not _STAGING:
        tmp = tempfile.gettempdir()
        _sweep_dead_drivers(tmp)
        path = tempfile.mkdtemp(prefix=_host_prefix(), dir=tmp)
        atexit.register(_remove_if_mine, path, os.getpid())
        # Locked before it takes its name, so a sweep never sees it unlocked. A filesystem without
        # locks (NFS without lockd): no owner file, never swept, still removed at exit.
        pending = os.path.join(path, _OWNER + ".new")
        owner = open(pending, "w")
        try:
            fcntl.flock(owner, fcntl.LOCK_EX)
            os.rename(pending, os.path.join(path, _OWNER))
        except OSError:
            owner.close()
            owner = None
            os.remove(pending)
        _STAGING.extend([path, owner])
    return _STAGING[0]


def _put_staged(uri: str, staging: str, is_dir: bool) -> None:
    """The file (or a directory's archive) under its staged name, whole or not at all."""
    part = staging + ".part"
    if is_dir:  # Spark's addFile refuses local directories outside local mode: ship an archive
        with tarfile.open(part, "w", dereference=True) as tar:
            tar.add(os.path.abspath(uri), arcname=".")
    else:
        # A directory entry of its own under the digest name (hard link, else a copy): Spark
        # resolves a symlink and ships the target under the target's name, which executors
        # then do not find (and two different model.bin files would collide).
        try:
            os.link(os.path.abspath(uri), part)
        except OSError:  # another filesystem, or links not allowed
            shutil.copy2(uri, part)
    os.replace(part, staging)


def stage(uri: str, sc=None, ship: bool = False) -> Resource:
    """On the driver: hash a resource and, when `ship`, send it to every executor with addFile."""
    if uri.startswith("s3://"):
        digest, is_dir = s3_digest(uri)
        return Resource(uri, digest, is_dir)
    if not os.path.exists(uri):
        raise BuildError(f"{uri}: no such file or directory (a filter's model or index)")
    digest, is_dir = local_digest(uri)
    if not ship:
        return Resource(uri, digest, is_dir)
    name = f"{digest[:16]}-{os.path.basename(os.path.normpath(uri))}" + (".tar" if is_dir else "")
    shipped = (getattr(sc, "applicationId", None) or id(sc), name)
    if shipped in _SHIPPED:  # an earlier build of this session shipped these bytes under this name:
        # Spark's file server takes one path per name, and a second addFile of it failed the build
        # (a long-lived session on a cluster; found by a tester). Executors check the digest.
        return Resource(uri, digest, is_dir, shipped_as=name)
    # Staged afresh by every build: a hard link made by an earlier build shares the inode of a
    # model edited in place since, and would ship other bytes under this digest (a reviewer).
    try:
        staging = os.path.join(tempfile.mkdtemp(dir=_staging_dir()), name)
        _put_staged(uri, staging, is_dir)
    except OSError as exc:  # the temporary directory full or not writable: one line, not a traceback
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise BuildError(f"{uri}: cannot stage it for the executors in {tempfile.gettempdir()} ({exc})") from None
        # "([Errno 28] No space left on device: '<model>' -> '<dir>/tmpv6egeli3/<digest>-<name>.part')" said
        # neither what to free nor which setting moves it (a tester, TMPDIR on a 64 KB tmpfs)
        from dolmino.s3 import place_remedy

        room = "a disk with room" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "a writable directory"
        raise BuildError(f"{uri}: cannot stage it for the executors in the driver's temporary directory "
                         f"{tempfile.gettempdir()} ({exc.strerror}); {place_remedy(exc.errno)} or set TMPDIR on the "
                         f"driver to {room}, then rerun the same command") from None
    sc.addFile(staging)
    _SHIPPED.add(shipped)
    return Resource(uri, digest, is_dir, shipped_as=name)


# (Spark application, shipped name) of what `stage` has added to a SparkContext's files.
_SHIPPED: set[tuple[str | int, str]] = set()


# ---------------------------------------------------------------------------- executors


def _cache_root() -> str:
    return os.environ.get("DOLMINO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dolmino")


def _marker(path: str, resource: Resource) -> str:
    return f"{path.rstrip('/')}.sha256-{resource.sha256[:16]}.ok"


def _stamp(path: str, resource: Resource) -> str:
    """The digest with the size and mtime of every file the copy holds: a marker holding the digest
    alone vouched for a cached copy changed or cut since it was checked, and the next build scored
    with it unsaid (found by a tester)."""
    files = [("", path)] if not os.path.isdir(path) else [(rel, os.path.join(path, rel)) for rel in _local_files(path)]
    stats = [(rel, os.stat(full)) for rel, full in files]
    return resource.sha256 + "\n" + "".join(f"{rel}\0{st.st_size} {st.st_mtime_ns}\n" for rel, st in stats)


def _mark_verified(path: str, resource: Resource) -> str:
    with open(_marker(path, resource), "w") as fh:
        fh.write(_stamp(path, resource))
    return path


def _verified(path: str, resource: Resource) -> str:
    """`path` after checking its digest once per node and copy: a marker beside it records the check
    and what the copy's files looked like then; a copy changed since is hashed again."""
    try:
        with open(_marker(path, resource)) as fh:
            if fh.read() == _stamp(path, resource):
                return path
    except OSError:
        pass
    digest, _ = local_digest(path)
    if digest != resource.sha256:
        raise BuildError(f"{resource.uri}: the copy on this executor ({path}) has SHA-256 {digest[:16]}..., "
                         f"the driver's has {resource.sha256[:16]}... (changed during the build?)")
    return _mark_verified(path, resource)


def _in_cache(resource: Resource, fill) -> str:
    """The node's cached copy of a resource: made once per node by `fill(dest)`, then checked."""
    base = os.path.join(_cache_root(), "resources", resource.sha256[:32])
    target = os.path.join(base, os.path.basename(resource.uri.rstrip("/")) or "object")
    try:
        os.makedirs(base, exist_ok=True)
        lock = open(os.path.join(base, ".lock"), "w")
    except OSError as exc:  # two Spark tracebacks and a 2,000-character line naming no setting (a tester)
        import socket

        raise BuildError(f"{resource.uri}: node {socket.gethostname()} cannot use its cache {_cache_root()} "
                         f"({exc.strerror or exc}); set DOLMINO_CACHE on the executors to a writable directory "
                         "(default ~/.cache/dolmino)") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one copy per node, whatever the number of workers
        if os.path.exists(target):
            try:
                return _verified(target, resource)
            except BuildError:  # a wrong copy cached by an earlier version: fetched again below
                _remove(target)
        tmp = tempfile.mkdtemp(dir=base, prefix=".partial-")
        try:
            dest = os.path.join(tmp, "x")
            try:
                fill(dest)
            except OSError as exc:  # "in an executor: OSError: [Errno 28] No space left on device" (a tester)
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise
                import socket

                from dolmino.s3 import place_remedy

                # a cache remounted read-only was told to free space there (a reviewer)
                room = "a writable directory" if exc.errno == errno.EROFS else "a directory with room"
                raise BuildError(f"{resource.uri}: node {socket.gethostname()} cannot copy it into its cache "
                                 f"{_cache_root()} ({exc.strerror}); {place_remedy(exc.errno)} or set DOLMINO_CACHE "
                                 f"on the executors to {room} (default ~/.cache/dolmino), then rerun the same "
                                 "command") from None
            # Checked before it takes the cache's name: a copy of an object replaced after the driver
            # hashed it stayed cached under the driver's digest, and every later build on the node
            # failed on it, also once the object was right again (found by a tester).
            digest, _ = local_digest(dest)
            if digest != resource.sha256:
                raise BuildError(f"{resource.uri}: the copy this executor fetched has SHA-256 {digest[:16]}..., the "
                                 f"driver's has {resource.sha256[:16]}... (changed during the build?); nothing was "
                                 "cached, a rerun fetches it again")
            os.replace(dest, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return _mark_verified(target, resource)  # just hashed: a model of GBs is not read a second time


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.remove(path)


def _download(resource: Resource) -> str:
    """A failure names the object (S3ObjectError), as `s3_digest` does on the driver: an executor
    without credentials ended the build with botocore's "NoCredentialsError: Unable to locate
    credentials", naming neither the model nor the executors' environment to fix (found by a tester)."""
    from dolmino.s3 import about, open_uri

    def fill(dest_root: str) -> None:
        with about(resource.uri):
            members, is_dir = _s3_members(resource.uri)
        for rel, member in members:
            dest = os.path.join(dest_root, rel) if is_dir else dest_root
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with about(member), open_uri(member, "rb") as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, HASH_CHUNK)

    return _in_cache(resource, fill)


def _unpack(archive: str, resource: Resource) -> str:
    def fill(dest: str) -> None:
        os.makedirs(dest)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")

    return _in_cache(resource, fill)


def localize(resource: Resource) -> str:
    """On an executor: a local path holding exactly the resource's bytes."""
    if resource.shipped_as:
        from pyspark import SparkFiles

        shipped = SparkFiles.get(resource.shipped_as)
        return _unpack(shipped, resource) if resource.is_dir else _verified(shipped, resource)
    if resource.uri.startswith("s3://"):
        return _download(resource)
    return resource.uri  # local mode: the driver's own disk


def localized_spec(spec: dict, resources: dict[str, Resource]) -> dict:
    """A filter spec whose file parameters point at local copies."""
    return {k: (localize(resources[v]) if k in file_params(spec) else v) for k, v in spec.items()}


def keyed_spec(spec: dict, resources: dict[str, Resource]) -> dict:
    """A filter spec whose file parameters are replaced by content digests (for attribute keys)."""
    return {k: (f"sha256:{resources[v].sha256}" if k in file_params(spec) else v) for k, v in spec.items()}
