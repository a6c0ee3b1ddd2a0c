"""The build's output location (local directory or s3:// prefix): commit records and checks.

A build is complete when `report.json` exists: the driver writes it last, after checking
that every part an executor reported is at the output location with the size and SHA-256
the executor reported (and, on a rerun, that every part it keeps from the earlier run
still is). A run starts by deleting `report.json`, so an interrupted run is
never mistaken for a finished one (`dolmino validate`, the trainer and `dolmino release
publish` refuse a directory without it).

Locally the driver re-hashes every file it checks. On S3 it reads each object's size and
the SHA-256 the executor stored in the object's metadata (S3 itself checks each upload's
integrity); re-reading a 200 GB mix through the driver would cost more than the build.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from dolmino.build.write import PARTS_DIR, PartResult
from dolmino.checksums import sha256_file
from dolmino.doc_lengths import histogram, read_sidecar_lengths
from dolmino.errors import BuildError
from dolmino.memmap import PART_FILE, part_name
from dolmino.storage import delete, is_remote, join, list_files, read_bytes, read_if_exists, write_bytes

COMPLETION_MARKER = "report.json"
PLAN_FILE = "_plan.json"
OWNER_FILE = "_owner.json"
REPORT_FILES = ("report.md", "manifest.json")


def start(out: str) -> dict:
    """Mark the output incomplete before anything else is written, and claim it: returns the
    owner record that `check_owner` compares before this build removes or certifies anything."""
    if not is_remote(out):
        os.makedirs(out, exist_ok=True)
    delete(out, [COMPLETION_MARKER])
    owner = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(out, OWNER_FILE, owner)
    return owner


def refuse_replacing(out: str, plan_hash: str, manifest, budget: int | None) -> None:
    """BuildError when `out` holds a complete build (report.json) of another manifest or budget.

    Two manifests sharing an `output`, or another --budget, replaced a finished mix unsaid, exit 0
    (found by a tester); refused as the trainer refuses a fresh run over an old one, unless
    --overwrite, naming what differs. The same plan again is a rerun that keeps its parts; the same
    manifest and budget over changed inputs or settings (a touched file, another --split-size,
    another dolmino) is the same command run again, which rebuilds what changed, as before (a
    reviewer: refused, it named nothing the user could see). An interrupted build (no report.json)
    is replaced. `budget` None: a pool manifest's build."""
    from dolmino.diff import manifest_changes

    data = read_if_exists(join(out, COMPLETION_MARKER))
    if data is None:
        return
    saved = read_json(out, PLAN_FILE)
    if saved is not None and saved.get("plan") == plan_hash:
        return
    try:
        there = json.loads(data)
    except ValueError:
        there = None
    there = there if isinstance(there, dict) else {}  # not a report we can read: still a complete build
    built = read_json(out, "manifest.json")
    changes = ["manifest.json (missing or not JSON)"] if built is None else manifest_changes(built, manifest.raw)
    # The budget the build ran with, from its report (a --budget, or the manifest's): the manifest's
    # own field is not compared apart (it said "budget, budget 4,000,000 -> 2,000,000"; a reviewer).
    # A pool's report holds its measured size, which no rebuild is refused for (a reviewer).
    changes = [c for c in changes if c != "budget"]
    held_budget = there.get("budget") if isinstance(there.get("budget"), int) else None
    if budget is not None and held_budget != budget:
        changes.append(f"budget {'none' if held_budget is None else f'{held_budget:,}'} -> {budget:,}")
    if not changes:
        return
    shown = ", ".join(changes[:4]) + (f" and {len(changes) - 4} more" if len(changes) > 4 else "")
    held = _described(there.get("manifest"), there.get("manifest_path"))
    what = "budget" if all(c.startswith("budget ") for c in changes) else "manifest"
    raise BuildError(f"--out {out} holds a complete build of another {what} ({held}; this build's "
                     f"{_described(manifest.name, manifest.path)} differs in {shown}): pass --overwrite to replace "
                     "it, or pick another --out")


def refuse_strays(out: str) -> None:
    """BuildError when `out` holds token files or sidecars that this build neither writes nor removes
    (`remove_stale` removes only its own names at the top and in _parts/): `backup/part-00009.npy`,
    say. The build certified --out beside them, exit 0, and publish then refused it, sending the
    user to rebuild, which never removes them (found by a tester)."""
    from dolmino.memmap import unlisted_data

    if strays := [n for n in unlisted_data(list_files(out), {}) if not _BUILD_FILE.fullmatch(n)]:
        raise BuildError(f"{join(out, strays[0])}: a token file or sidecar inside --out that this build neither writes "
                         f"nor removes ({len(strays)} such file(s)), which `dolmino validate`, the trainer and "
                         "`dolmino release publish` refuse beside the build; move them out of --out (`mv`, or "
                         "`aws s3 mv` on S3), then rerun")


def _described(name, path) -> str:
    return (f"manifest {name!r}" if name else "manifest unknown") + (f" ({path})" if path else "")


def check_owner(out: str, owner: dict, stops: str = "without removing or certifying anything", *,
                absent_ok: bool = False) -> None:
    """BuildError unless this build still owns `out`.

    Two builds into one --out are a mistake no lock prevents here (a lease would need
    heartbeats, and a killed build's lease would then block its own rerun). The last one
    started owns the output: an earlier one stops before it removes "stale" parts (the
    other's) or writes report.json, instead of printing success over files it no longer
    vouches for. A build that finishes before the next starts is simply replaced by it.
    `absent_ok` (an executor's check): no owner file, or one of a build started before this one,
    is no later build's claim (a local --out not on the driver's disk, where a node may hold an
    earlier build's file; a reviewer): the driver then says so, naming the parts it cannot see."""
    current = read_json(out, OWNER_FILE)
    if absent_ok and (current is None or str(current.get("started", "")) < owner["started"]):
        return  # not visible here, or an earlier build's left on a node's own disk: not a later build's claim
    if current is None or current.get("token") != owner["token"]:
        other = "another build" if current is None else (
            f"another build (started {current.get('started')} on {current.get('host')}, pid {current.get('pid')})")
        raise BuildError(f"{out}: {other} started writing here after this one (started {owner['started']}); "
                         f"it owns the output now, and this build stops {stops}. "
                         "Run one build per --out; rerun this one when the other is done if its output is the one "
                         "you want")


def read_json(out: str, name: str) -> dict | None:
    """A JSON file of the output; None when it is missing or not JSON (a torn earlier run)."""
    data = read_if_exists(join(out, name))
    try:
        return None if data is None else json.loads(data)
    except ValueError:
        return None


def write_json(out: str, name: str, data: dict) -> None:
    write_bytes(join(out, name), (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def committed_parts(out: str, plan_hash: str, num_parts: int) -> dict[int, PartResult]:
    """Parts committed by an earlier run of the same plan whose files are all still there, as
    committed: each file is checked as `verify_parts` checks new ones (size and SHA-256), so
    a part damaged or replaced since is written again instead of certified by the new report."""
    sizes = list_files(out)
    names = [name for name in sizes if name.startswith(PARTS_DIR + "/") and name.endswith(".json")]
    # Eight at a time, as the checks below: one GET after another, a resume of thousands of parts on
    # S3 waited out each GET's latency in turn (a tester)
    with ThreadPoolExecutor(max_workers=8) as pool:
        records = list(pool.map(lambda name: read_json(out, name), names))
    candidates = []
    for record in records:
        if not record or record.get("plan") != plan_hash or record.get("index", -1) >= num_parts:
            continue
        files = tuple(_part_file(f) for f in record["files"])
        if all(sizes.get(f.name) == f.size for f in files):
            candidates.append((record, files))
    checks = [(f.name, f.size, f.sha256) for _record, files in candidates for f in files]
    damaged = {c[0] for c, problem in zip(checks, _check_all(out, checks)) if problem}
    return {record["index"]: PartResult(record["index"], record["tokens"], record["docs"], record["tokens_by_source"],
                                        record["docs_by_source"], files, _committed_doc_hist(out, record), True,
                                        record.get("masked_by_source"))
            for record, files in candidates if not any(f.name in damaged for f in files)}


def _committed_doc_hist(out: str, record: dict) -> dict:
    """A committed part's tokens-per-document histograms: its record's, else (a part committed by a
    build from before records held them) from its sidecar. Taken as none, the report's doc_tokens_hist
    counted only the parts this run wrote, and `dolmino report` drew it as every part counted (found by
    a tester)."""
    if "doc_hist" in record:
        return record["doc_hist"]
    lengths = read_sidecar_lengths(join(out, f"{part_name(record['index'])}.csv.gz"))
    return {src: histogram(n) for src, n in sorted(lengths.items())}


def _part_file(d: dict):
    from dolmino.build.write import PartFile

    return PartFile(d["name"], d["size"], d["sha256"])


def _check_one(out: str, name: str, size: int, sha256: str) -> str | None:
    if is_remote(out):
        from botocore.exceptions import ClientError

        from dolmino.s3 import client, is_missing_object, named_failure, split_uri

        bucket, key = split_uri(join(out, name))
        try:
            head = client().head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if is_missing_object(exc):
                return f"{name}: missing"
            # A HEAD whose retries were spent (503 SlowDown) said "missing ... deleted or overwritten while the
            # build ran" of a part that was there (found by a tester): the store's failure, named, is the error.
            raise named_failure(join(out, name), exc) from None
        if int(head["ContentLength"]) != size:
            return f"{name}: {head['ContentLength']} bytes, the executor wrote {size}"
        if head.get("Metadata", {}).get("sha256") != sha256:
            return f"{name}: SHA-256 differs from the executor's"
        return None
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return f"{name}: missing"
    if os.path.getsize(path) != size:
        return f"{name}: {os.path.getsize(path)} bytes, the executor wrote {size}"
    if sha256_file(path) != sha256:
        return f"{name}: SHA-256 differs from the executor's"
    return None


def _check_all(out: str, checks: list[tuple[str, int, str]]) -> list[str | None]:
    """`_check_one` of each (name, size, sha256), in order, eight at a time (HEADs on S3)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda c: _check_one(out, *c), checks))


def verify_parts(out: str, parts: list[PartResult]) -> None:
    """Every reported part file is at the output location as reported, or exit-2 BuildError."""
    checks = [(f.name, f.size, f.sha256) for p in parts for f in p.files]
    problems = [p for p in _check_all(out, checks) if p]
    if problems:
        shown = "\n  ".join(problems[:10]) + ("\n  ..." if len(problems) > 10 else "")
        raise BuildError(
            f"{len(problems)} of {len(checks)} part files the executors reported are not as reported at {out}:\n  "
            f"{shown}\n{_not_as_reported(out)} The build is not complete (no report.json).")


def _not_as_reported(out: str) -> str:
    """Why parts an executor reported may not be at `out`. The shared-filesystem hint was given for an
    s3:// --out too, whose bucket had been deleted mid-build (found by a tester)."""
    if not is_remote(out):
        return ("On a cluster without a shared filesystem, write --out to s3:// (or a filesystem mounted at the "
                "same path on every node).")
    from dolmino.s3 import NoSuchBucket, check_bucket, split_uri

    bucket = split_uri(out)[0]
    try:
        check_bucket(bucket)
    except NoSuchBucket:
        return (f"The bucket s3://{bucket} does not exist any more (deleted while the build ran?): create it again "
                "and rerun the same command.")
    except Exception:  # noqa: BLE001 - only the hint depends on it (HeadBucket needs s3:ListBucket)
        pass
    return ("The executors' objects are missing or changed at S3 (deleted or overwritten while the build ran: a "
            "lifecycle rule, another tool?); rerun the same command to write them again.")


# What a build writes at the top of --out and in _parts/; nothing else is ever removed as stale.
# It matched any path starting "part-" at any depth: inputs kept under --out (a directory named
# part-backup/, say) were deleted unsaid (found by a tester).
_BUILD_FILE = re.compile(f"(?:{PART_FILE.pattern})" + r"(?:\.tmp\d+)?|"
                         + re.escape(PARTS_DIR) + r"/part-\d{5,}\.json(?:\.tmp\d+)?")


def remove_stale(out: str, keep: set[str]) -> list[str]:
    """Delete part files and commit records that the current build did not write, and on S3 the
    unfinished uploads of them (`abort_unfinished_uploads`)."""
    stale = [n for n in list_files(out) if _BUILD_FILE.fullmatch(n) and n not in keep]
    delete(out, stale)
    abort_unfinished_uploads(out)
    return stale


def abort_unfinished_uploads(out: str) -> list[str]:
    """Abort the unfinished multipart uploads of the build's own file names under an s3:// --out;
    returns their names. A part task killed mid-upload (Ctrl-C or a killed driver cancelling it, a
    lost executor) left its upload open: invisible to listings, yet stored and billed for good (up
    to 2 GB a part at 512M tokens per file), and a rerun that completed the build left it there
    (found by a tester). Called once every part is written and checked, while this build owns
    --out: an upload still open then is no part this build needs (a killed task's, or a cancelled
    duplicate attempt's, whose object would hold the same bytes). A store that does not list or
    abort multipart uploads (NotImplemented), or a policy that does not grant it (AccessDenied),
    leaves them to the bucket's lifecycle rules (AbortIncompleteMultipartUpload): the build never
    fails for it."""
    if not is_remote(out):
        return []
    from botocore.exceptions import ClientError

    from dolmino.s3 import abort_upload, error_code, multipart_uploads, not_implemented, split_uri

    denied = ("AccessDenied", "403", "Forbidden")  # a policy without the call: as a store without it
    bucket, prefix = split_uri(out.rstrip("/") + "/")
    try:
        uploads = [u for u in multipart_uploads(bucket, prefix) if _BUILD_FILE.fullmatch(u["Key"][len(prefix):])]
    except ClientError as exc:
        if error_code(exc) in denied:
            return []
        raise
    aborted = []
    for upload in uploads:
        try:
            abort_upload(bucket, upload)
        except ClientError as exc:
            if error_code(exc) in ("NoSuchUpload", "404"):  # finished or aborted since it was listed
                continue
            if not_implemented(exc) or error_code(exc) in denied:
                break
            raise
        aborted.append(upload["Key"][len(prefix):])
    return aborted


QUARANTINE_DIR = "quarantine"  # under --out: refused input lines, one file per input (or byte range)


def quarantine_name(source: str, key: str) -> str:
    """A unit's quarantine file, relative to --out's quarantine/: <source>/<input path>.jsonl.gz,
    the input's path relative to the data root ("/" flattened to "__" made web/d/e.jsonl and
    web/d__e.jsonl one file, one record lost, and deep paths too long a name). A key that is not
    a clean relative path (S3 keys with "//", an s3:// source outside the data root) is cleaned,
    plus a hash of itself: still one file."""
    parts = ["_.." if p == ".." else p for p in key.replace("s3://", "s3/", 1).split("/") if p not in ("", ".")]
    name = "/".join(parts)
    if name != key:
        name += "." + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{source}/{name}.jsonl.gz"


def copy_quarantine(out: str, copies: list[tuple[str, str, int]]) -> None:
    """(source path, name from `quarantine_name`, line offset): each unit's quarantine file into
    --out, its records' lines moved by the lines of the file before the unit (byte ranges). Then
    the quarantine files this build did not write are removed (an earlier build's, of inputs
    clean now or named otherwise): a release would hold lines its report does not count."""
    from dolmino.documents import shift_quarantine_lines

    root = join(out, QUARANTINE_DIR)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda c: write_bytes(join(root, c[1]), shift_quarantine_lines(read_bytes(c[0]), c[2])),
                      copies))
    written = {name for _, name, _ in copies}
    delete(root, [n for n in list_files(root) if n.endswith(".jsonl.gz") and n not in written])
