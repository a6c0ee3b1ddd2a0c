"""Whole files under a location that is a local directory or an s3:// prefix.

The build (attribute files, parts' commit records, reports, the lock), synthetic data and the
report command all keep small files wherever --out / --attributes point, and must behave the
same on a laptop and on a cluster whose only shared storage is S3. One module, so that:
- a missing file is FileNotFoundError on both (S3PathError on S3), never a botocore class that
  an `except OSError` meant for "not written yet" lets through;
- a write is all or nothing on both: a local temporary file renamed, or one PUT;
- a delete that S3 refuses for some keys raises (S3DeleteError) instead of passing quietly.
"""

from __future__ import annotations

import os
from pathlib import Path

from dolmino import s3


def is_remote(location: str) -> bool:
    return s3.is_s3(location)


def join(root: str, *names: str) -> str:
    """root/names...; "/" on both kinds of location (local paths here are POSIX)."""
    return "/".join([root.rstrip("/"), *names])


def _nearest_existing(place: Path) -> Path:
    """`place` if it exists (a dangling symlink does), else its nearest existing ancestor: every
    ancestor of an existing path is a directory, so only this one can be in the way."""
    while not os.path.lexists(place) and place.parent != place:
        place = place.parent
    return place


def file_above(path: str) -> str | None:
    """The nearest existing path above local `path` (its directory, then theirs) that is not a
    directory: where making `path`'s directories would fail with "[Errno 17] File exists",
    a message naming neither path (found by testers of pull and eval), or None."""
    place = _nearest_existing(Path(path).absolute().parent)
    return None if place.is_dir() else str(place)


def why_unwritable(path: str) -> str | None:
    """Why files cannot be made at local `path` (a directory, existing or to be made), from the
    nearest existing path at or above it; None when they can. Checked before work that would
    otherwise fail only when it first writes, after minutes of it: a read-only mount or
    checkout, no permission, a file or a dangling symlink in the way."""
    place = _nearest_existing(Path(path).absolute())
    if place.is_symlink() and not place.exists():
        return f"{place} is a symlink to a missing target"
    if not place.is_dir():
        return f"{place} is a file, not a directory"
    return None if os.access(place, os.W_OK | os.X_OK) else f"{place} is read-only or not writable here"


def make_writable_dir(path: str | Path) -> str | None:
    """Make local directory `path` (and its parents) and a temporary file in it: why that failed
    (the OS's reason), or None. Unlike `why_unwritable` it tries: as root, access() calls a
    read-only mount or /proc writable, and a command failed only when it wrote its result."""
    import tempfile

    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".dolmino-write-check-"):
            pass
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file: through relative parts, symlinks and hard links (s3://
    keys as written). An output named as its input replaced it in several commands (testers)."""
    if s3.is_s3(a) or s3.is_s3(b):
        return a == b
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def read_bytes(path: str) -> bytes:
    """A whole file; FileNotFoundError (S3PathError on S3) when it does not exist."""
    if is_remote(path):
        return s3.get_bytes(path)
    with open(path, "rb") as fh:
        return fh.read()


def read_if_exists(path: str) -> bytes | None:
    """A whole file, or None when the file does not exist (a missing bucket still raises)."""
    try:
        return read_bytes(path)
    except s3.NoSuchBucket:
        raise
    except FileNotFoundError:
        return None


TMP_DIGITS = 7  # as many as a pid has at most (pid_max 4194304): attribute names budget for it (inputs.MAX_NAME_BYTES)


def open_temporary(path: str):
    """(name, file opened for writing) of a new temporary file beside `path`: "<path>.tmp<digits>",
    the form the listings skip (attributes._TMP_SUFFIX, output._BUILD_FILE, release._TMP_RE).

    The digits are random and the file is created exclusively. They were the writer's pid, which is
    unique on one host only: two nodes writing one attribute root over NFS (containers number their
    processes alike), as two attempts of one task do under Spark's speculation, opened one temporary
    file, so that one attempt's rename published the file while the other still wrote into it (a file
    cut short, kept as done when that attempt was killed) and the other's rename failed. The file's
    directory is made if missing. Used by every local writer of build files (attributes, Stack
    Exchange documents, parts written into a local --out)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    for _ in range(64):
        tmp = f"{path}.tmp{int.from_bytes(os.urandom(4), 'big') % 10 ** TMP_DIGITS}"
        try:
            return tmp, open(tmp, "xb")
        except FileExistsError:  # another writer's (or a killed one's) temporary file: never touch it
            continue
        except OSError as exc:  # a read-only or forbidden directory: named by the file to be written
            if (named := naming(exc, path, tmp)) is exc:
                raise
            raise named from exc
    raise FileExistsError(f"no free temporary name beside {path} after 64 tries: remove its stale .tmp files")


def naming(exc: OSError, path: str, temporary: str | None = None) -> OSError:
    """`exc`, or where it names no file (a write into a full disk or a filesystem remounted read-only
    raises "[Errno 28] No space left on device" with no filename) the same error naming `path`: a build
    whose --out or attributes root filled ended in "in an executor: OSError: [Errno 28] No space left
    on device", naming no place to free (found by a tester). So too where it names `temporary`, the
    random name of the write's own temporary file, which the user never gave: `dolmino lock` into a
    read-only directory said "demo.lock.json.tmp4110110: Read-only file system" (a tester)."""
    if exc.errno is None or exc.filename not in (None, temporary):
        return exc
    return OSError(exc.errno, exc.strerror, path)


def write_bytes(path: str, data: bytes, *, sync: bool = False) -> None:
    """Write a whole file atomically: a local temporary file of this write alone renamed (fsynced
    first with `sync`; removed when the write fails), or one S3 PUT, which is atomic itself."""
    if is_remote(path):
        bucket, key = s3.split_uri(path)
        with s3.about(path):
            s3.client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    tmp, fh = open_temporary(path)
    try:
        with fh:
            fh.write(data)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:  # a full disk, Ctrl-C: its random name would stay behind for good
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and (named := naming(exc, path, tmp)) is not exc:
            raise named from exc
        raise


def list_files(root: str, prefix: str = "") -> dict[str, int]:
    """name (relative to root, "/"-separated) -> size of every file under root/prefix; {} when
    there is none (a local root that does not exist, an empty prefix)."""
    if is_remote(root):
        bucket, key = s3.split_uri(root.rstrip("/") + "/")
        return {k[len(key):]: size for k, size in s3.iter_keys(bucket, key + prefix)}
    base = os.path.join(root, prefix)
    found = {}
    if os.path.isdir(base) or not prefix:
        for dirpath, _dirs, files in os.walk(base if os.path.isdir(base) else root):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    found[os.path.relpath(path, root)] = os.path.getsize(path)
                except FileNotFoundError:
                    if not os.path.lexists(path):  # gone since the walk: another writer's temporary file, renamed
                        continue
                    # a link that leads nowhere is listed (the link's own size): what reads it names it
                    # (an attribute file "not readable: delete it and tag again"), a stale part is removed
                    found[os.path.relpath(path, root)] = os.lstat(path).st_size
    return found


def list_dirs(root: str) -> list[str]:
    """Names of the directories (S3: common prefixes) right below root, sorted; [] when there
    is none (a local root that does not exist)."""
    if is_remote(root):
        bucket, key = s3.split_uri(root.rstrip("/") + "/")
        return sorted(p[len(key):].rstrip("/") for p in s3.list_prefixes(bucket, key))
    try:
        return sorted(e.name for e in os.scandir(root) if e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def delete(root: str, names: list[str]) -> None:
    """Delete root/name for each name; a name that is already gone is not an error."""
    if not names:
        return
    if is_remote(root):
        bucket, key = s3.split_uri(root.rstrip("/") + "/")
        s3.delete_keys(bucket, [key + n for n in names])
        return
    for name in names:
        try:
            os.remove(os.path.join(root, name))
        except FileNotFoundError:
            pass
