"""Releases: publish a built mix to S3, then list, pull and verify it, all-or-nothing.

    dolmino release publish BUILD_DIR s3://bucket/prefix --name NAME
    dolmino release list    s3://bucket/prefix
    dolmino release pull    s3://bucket/prefix/NAME DEST
    dolmino release verify  s3://bucket/prefix/NAME
    dolmino release delete  s3://bucket/prefix/NAME --yes

Layout: every file of the build (part-*.npy, part-*.csv.gz, part-*.label_mask.npy,
manifest.json, report.json, report.md, quarantine/**) goes to `prefix/NAME/<same relative
path>`, and `prefix/NAME/RELEASE.json` is written LAST. RELEASE.json is the commit record:
format, name, created (UTC), dolmino version, the manifest's name/version/seed, output totals,
and for every file its path, size and SHA-256.

Why this design:
- S3 has no multi-object transactions, but a single PUT is atomic. So a release *exists*
  exactly when its RELEASE.json does; `list`, `pull` and `verify` ignore anything else. A
  publish that dies half-way leaves objects without RELEASE.json: invisible, and removed
  (with a message saying so) by the next publish of that name.
- Releases are immutable; there is no --force. Overwriting in place cannot be atomic
  (readers would see new parts under the old checksums for a while) and would silently
  change data that someone already trained on. Publish under a new name, or `delete` first
  (which removes RELEASE.json before anything else, so the release vanishes at once).
- RELEASE.json is written with If-None-Match: two publishers racing on one name cannot both
  commit. Before committing, every uploaded object is checked (HEAD: size and the sha256
  recorded in its metadata), so an object replaced during the upload is caught.
- `pull` downloads into a temporary directory beside DEST, checks every size and SHA-256
  against RELEASE.json, and renames the directory into place only if all match: DEST is
  either the complete, verified release or absent. `verify` re-hashes the objects in place.
- Keys are validated (no '..' or '.' segments, no absolute paths, no empty segments, no
  backslashes or control characters), both when publishing and when reading a RELEASE.json
  that someone else wrote, so a hostile release cannot write outside DEST.
- Messages never contain credentials: everything printed goes through dolmino.s3.redact.
- Large files use multipart upload/download (boto3 transfer manager, 64 MiB parts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Callable

from dolmino import s3

RELEASE_FILE = "RELEASE.json"
RELEASE_FORMAT = "dolmino-release/1"
# A finished build writes these last (dolmino.report.write_report); without them it is not one.
REQUIRED_FILES = ("manifest.json", "report.json")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_TMP_RE = re.compile(r"\.tmp\d+$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_PART_SIZE = 64 * 1024 * 1024
_HASH_CHUNK = 8 * 1024 * 1024


class ReleaseError(RuntimeError):
    """A release operation that cannot go ahead; the message says what to do."""


class ReleaseExistsError(ReleaseError):
    pass


class ReleaseNotFoundError(ReleaseError):
    pass


class ReleaseIntegrityError(ReleaseError):
    """An object whose size or SHA-256 differs from RELEASE.json."""


# ---------------------------------------------------------------- validation


def validate_key(key: str, what: str = "key") -> str:
    """Return `key` if it is a safe relative object key / file path, else raise ValueError naming it."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"{what} {key!r}: must be a non-empty string")
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        raise ValueError(f"{what} {key!r}: must be relative, not absolute")
    if "\\" in key:
        raise ValueError(f"{what} {key!r}: backslashes are not allowed")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise ValueError(f"{what} {key!r}: control characters are not allowed")
    for segment in key.split("/"):
        if segment == "":
            raise ValueError(f"{what} {key!r}: empty path segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise ValueError(f"{what} {key!r}: '{segment}' segments are not allowed")
    return key


def validate_name(name: str) -> str:
    """Release names are one path segment of letters, digits and . _ + - (at most 128)."""
    validate_key(name, "release name")
    if not _NAME_RE.match(name):
        raise ValueError(f"release name {name!r}: use letters, digits and . _ + - only, "
                         "starting with a letter or digit, at most 128 characters")
    return name


def split_root(root_uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b/"); the bucket root gives ("bucket", "")."""
    bucket, key = s3.split_uri(root_uri)
    key = key.rstrip("/")
    if key:
        validate_key(key, "release prefix")
        return bucket, key + "/"
    return bucket, ""


def split_release(release_uri: str) -> tuple[str, str, str]:
    """`s3://bucket/prefix/NAME` -> (bucket, "prefix/NAME/", NAME)."""
    bucket, key = s3.split_uri(release_uri)
    key = key.rstrip("/")
    if not key:
        raise ValueError(f"{release_uri!r}: expected s3://bucket/prefix/NAME (the release, not the bucket)")
    validate_key(key, "release location")
    name = key.rsplit("/", 1)[-1]
    validate_name(name)
    return bucket, key + "/", name


# ---------------------------------------------------------------- local files


def sha256_file(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def collect_build_files(build_dir: str) -> list[tuple[str, str]]:
    """(relative key, absolute path) of every file of a finished build, sorted.

    Refuses directories that are not a finished build (no report.json / manifest.json, a
    part still being written) and symlinks (a release must hold the bytes, not a pointer).
    """
    build_dir = os.path.abspath(build_dir)
    if not os.path.isdir(build_dir):
        raise ReleaseError(f"{build_dir}: not a directory")
    files = []
    for dirpath, dirnames, filenames in os.walk(build_dir, followlinks=False):
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise ReleaseError(f"{os.path.join(dirpath, d)}: symlinked directories cannot be published")
        dirnames.sort()
        for fname in sorted(filenames):
            full = os.path.join(dirpath, fname)
            rel = os.path.relpath(full, build_dir).replace(os.sep, "/")
            if os.path.islink(full):
                raise ReleaseError(f"{rel}: symlinks cannot be published (copy the file into the build)")
            if _TMP_RE.search(fname):
                raise ReleaseError(f"{rel}: a file is still being written (or a build crashed); "
                                   "finish or re-run the build before publishing")
            if rel == RELEASE_FILE:
                raise ReleaseError(f"{rel}: the build directory already holds a {RELEASE_FILE} "
                                   "(it looks like a pulled release; publish the original build)")
            files.append((validate_key(rel, "file"), full))
    present = {rel for rel, _ in files}
    missing = [f for f in REQUIRED_FILES if f not in present]
    if missing:
        raise ReleaseError(f"{build_dir}: not a finished build (missing {', '.join(missing)})")
    if not any(rel.startswith("part-") and rel.endswith(".npy") for rel in present):
        raise ReleaseError(f"{build_dir}: no part-*.npy token files")
    return sorted(files)


def _dolmino_version() -> str:
    try:
        from importlib.metadata import version

        return version("dolmino")
    except Exception:  # noqa: BLE001 - running from a checkout without install
        return "unknown"


def _build_summary(build_dir: str) -> dict:
    with open(os.path.join(build_dir, "manifest.json"), encoding="utf-8") as fh:
        manifest = json.load(fh)
    with open(os.path.join(build_dir, "report.json"), encoding="utf-8") as fh:
        report = json.load(fh)
    output = report.get("output", {}) if isinstance(report, dict) else {}
    return {
        "manifest": {k: manifest.get(k) for k in ("name", "version", "seed", "budget")}
        if isinstance(manifest, dict) else {},
        "output": {k: output.get(k) for k in ("tokens", "docs", "files") if k in output},
    }


# ---------------------------------------------------------------- S3 helpers


def _transfer_config(part_size: int):
    from boto3.s3.transfer import TransferConfig

    part_size = max(int(part_size), 5 * 1024 * 1024)  # S3's minimum part size
    return TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size,
                          max_concurrency=8, use_threads=True)


def _get_json(bucket: str, key: str) -> dict | None:
    from botocore.exceptions import ClientError

    try:
        body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if s3._is_missing(exc) and s3._error_code(exc) != "NoSuchBucket":  # noqa: SLF001
            return None
        if s3._error_code(exc) == "NoSuchBucket":  # noqa: SLF001
            raise s3.S3PathError(f"s3://{bucket}: bucket does not exist") from None
        raise
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleaseError(f"s3://{bucket}/{key}: not valid JSON ({exc})") from None


def _delete_keys(bucket: str, keys: list[str]) -> None:
    cl = s3.client()
    for i in range(0, len(keys), 1000):
        batch = keys[i:i + 1000]
        result = cl.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
        errors = result.get("Errors") or []
        if errors:
            first = errors[0]
            raise ReleaseError(f"could not delete {len(errors)} object(s), e.g. s3://{bucket}/{first.get('Key')}: "
                               f"{first.get('Code')} {first.get('Message', '')}")


def _abort_multipart_uploads(bucket: str, prefix: str) -> int:
    cl = s3.client()
    aborted = 0
    for page in cl.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", ()):
            cl.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            aborted += 1
    return aborted


def parse_release_record(record: object, where: str, name: str | None = None) -> dict:
    """Check a RELEASE.json someone else wrote before trusting any path or checksum in it."""
    if not isinstance(record, dict) or record.get("format") != RELEASE_FORMAT:
        raise ReleaseError(f"{where}: not a {RELEASE_FORMAT} record")
    if name is not None and record.get("name") != name:
        raise ReleaseError(f"{where}: records name {record.get('name')!r}, expected {name!r}")
    files = record.get("files")
    if not isinstance(files, list) or not files:
        raise ReleaseError(f"{where}: 'files' must be a non-empty list")
    seen = set()
    for i, entry in enumerate(files):
        if not isinstance(entry, dict):
            raise ReleaseError(f"{where}: files[{i}] is not an object")
        path = entry.get("path")
        try:
            validate_key(path, f"files[{i}].path")
        except ValueError as exc:
            raise ReleaseError(f"{where}: {exc}") from None
        if path == RELEASE_FILE or path in seen:
            raise ReleaseError(f"{where}: files[{i}].path {path!r} is reserved or listed twice")
        seen.add(path)
        if not isinstance(entry.get("size"), int) or isinstance(entry.get("size"), bool) or entry["size"] < 0:
            raise ReleaseError(f"{where}: files[{i}].size must be a non-negative integer")
        if not isinstance(entry.get("sha256"), str) or not _SHA256_RE.match(entry["sha256"]):
            raise ReleaseError(f"{where}: files[{i}].sha256 must be 64 lower-case hex digits")
    return record


def read_release(release_uri: str) -> dict:
    """The RELEASE.json of a complete release; a clear error for missing or half-published ones."""
    bucket, key_prefix, name = split_release(release_uri)
    record = _get_json(bucket, key_prefix + RELEASE_FILE)
    if record is None:
        leftovers = next(s3.iter_keys(bucket, key_prefix), None)
        if leftovers is not None:
            raise ReleaseNotFoundError(f"{release_uri}: incomplete release (objects but no {RELEASE_FILE}: "
                                       "a publish was interrupted or is still running)")
        raise ReleaseNotFoundError(f"{release_uri}: no such release")
    return parse_release_record(record, f"{release_uri}/{RELEASE_FILE}", name)


# ---------------------------------------------------------------- commands


Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def publish(build_dir: str, root_uri: str, name: str, *, part_size: int = DEFAULT_PART_SIZE,
            log: Log = _quiet) -> dict:
    """Upload a finished build as release NAME under root_uri; returns the RELEASE.json record."""
    from botocore.exceptions import ClientError

    validate_name(name)
    bucket, prefix = split_root(root_uri)
    key_prefix = f"{prefix}{name}/"
    release_uri = s3.join_uri(bucket, key_prefix.rstrip("/"))
    files = collect_build_files(build_dir)
    s3.check_bucket(bucket)

    if _get_json(bucket, key_prefix + RELEASE_FILE) is not None:
        raise ReleaseExistsError(f"{release_uri}: release already exists; releases are immutable "
                                 "(publish under a new name, or `dolmino release delete` it first)")
    stale = [k for k, _ in s3.iter_keys(bucket, key_prefix)]
    aborted = _abort_multipart_uploads(bucket, key_prefix)
    if stale or aborted:
        log(f"{release_uri}: removing {len(stale)} object(s) and {aborted} unfinished multipart upload(s) "
            "left by an interrupted publish")
        _delete_keys(bucket, stale)

    cl = s3.client()
    config = _transfer_config(part_size)
    entries = []
    for rel, full in files:
        digest, size = sha256_file(full)
        cl.upload_file(full, bucket, key_prefix + rel, Config=config,
                       ExtraArgs={"Metadata": {"sha256": digest}})
        entries.append({"path": rel, "size": size, "sha256": digest})
        log(f"uploaded {rel} ({size:,} bytes)")

    # Pre-commit check: what is on S3 now is what we hashed (catches a file that changed
    # while being read, or an object replaced by someone else during the upload).
    for entry in entries:
        head = cl.head_object(Bucket=bucket, Key=key_prefix + entry["path"])
        if int(head["ContentLength"]) != entry["size"] or head.get("Metadata", {}).get("sha256") != entry["sha256"]:
            raise ReleaseIntegrityError(f"{entry['path']}: object changed during publish "
                                        f"(size {head['ContentLength']} vs {entry['size']}); nothing was released")

    record = {
        "format": RELEASE_FORMAT,
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dolmino_version": _dolmino_version(),
        **_build_summary(os.path.abspath(build_dir)),
        "total_bytes": sum(e["size"] for e in entries),
        "files": entries,
    }
    body = json.dumps(record, indent=2, sort_keys=False).encode("utf-8") + b"\n"
    try:
        cl.put_object(Bucket=bucket, Key=key_prefix + RELEASE_FILE, Body=body,
                      ContentType="application/json", IfNoneMatch="*")
    except ClientError as exc:
        if s3._error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):  # noqa: SLF001
            raise ReleaseExistsError(f"{release_uri}: another publish of this name committed first") from None
        raise
    log(f"released {release_uri} ({len(entries)} files, {record['total_bytes']:,} bytes)")
    return record


def list_releases(root_uri: str) -> tuple[list[dict], list[str]]:
    """(complete release records sorted by name, names of incomplete uploads) under root_uri."""
    bucket, prefix = split_root(root_uri)
    s3.check_bucket(bucket)
    complete, incomplete = [], []
    for sub in s3.list_prefixes(bucket, prefix):
        name = sub[len(prefix):].rstrip("/")
        try:
            validate_name(name)
        except ValueError:
            continue  # not something publish could have written
        record = _get_json(bucket, sub + RELEASE_FILE)
        if record is None:
            incomplete.append(name)
            continue
        try:
            complete.append(parse_release_record(record, s3.join_uri(bucket, sub + RELEASE_FILE), name))
        except ReleaseError:
            incomplete.append(name)
    return complete, incomplete


def _check_local(path: str, entry: dict) -> None:
    digest, size = sha256_file(path)
    if size != entry["size"]:
        raise ReleaseIntegrityError(f"{entry['path']}: size {size:,} bytes, RELEASE.json says {entry['size']:,}")
    if digest != entry["sha256"]:
        raise ReleaseIntegrityError(f"{entry['path']}: SHA-256 {digest} does not match RELEASE.json ({entry['sha256']})")


def pull(release_uri: str, dest: str, *, part_size: int = DEFAULT_PART_SIZE, log: Log = _quiet) -> dict:
    """Download and verify a release into DEST (which must not exist, or be an empty directory).

    All files land in a temporary directory beside DEST first; only when every size and
    SHA-256 matches is it renamed to DEST, so DEST is never a partial or corrupt release.
    """
    bucket, key_prefix, _name = split_release(release_uri)
    dest = os.path.abspath(dest)
    if os.path.lexists(dest) and not (os.path.isdir(dest) and not os.path.islink(dest) and not os.listdir(dest)):
        raise ReleaseError(f"{dest}: already exists; pull into a new directory")
    record = read_release(release_uri)
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.pull-", dir=parent)
    try:
        cl = s3.client()
        config = _transfer_config(part_size)
        for entry in record["files"]:
            local = os.path.join(tmp, *entry["path"].split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            cl.download_file(bucket, key_prefix + entry["path"], local, Config=config)
            _check_local(local, entry)
            log(f"verified {entry['path']} ({entry['size']:,} bytes)")
        with open(os.path.join(tmp, RELEASE_FILE), "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2)
            fh.write("\n")
        if os.path.isdir(dest):
            os.rmdir(dest)  # empty (checked above); rename cannot replace a directory portably
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"pulled {release_uri} into {dest} ({len(record['files'])} files, all SHA-256 verified)")
    return record


def verify(release_uri: str, *, log: Log = _quiet) -> list[str]:
    """Re-hash every object of a release in place; returns the problems found (empty = good)."""
    bucket, key_prefix, _name = split_release(release_uri)
    record = read_release(release_uri)
    cl = s3.client()
    problems = []
    listed = {key_prefix + e["path"] for e in record["files"]} | {key_prefix + RELEASE_FILE}
    for key, _size in s3.iter_keys(bucket, key_prefix):
        if key not in listed:
            problems.append(f"{key[len(key_prefix):]}: object is not listed in {RELEASE_FILE}")
    for entry in record["files"]:
        from botocore.exceptions import ClientError

        try:
            body = cl.get_object(Bucket=bucket, Key=key_prefix + entry["path"])["Body"]
        except ClientError as exc:
            if s3._is_missing(exc):  # noqa: SLF001
                problems.append(f"{entry['path']}: object is missing")
                continue
            raise
        digest, size = hashlib.sha256(), 0
        for chunk in body.iter_chunks(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if size != entry["size"]:
            problems.append(f"{entry['path']}: size {size:,} bytes, {RELEASE_FILE} says {entry['size']:,}")
        elif digest.hexdigest() != entry["sha256"]:
            problems.append(f"{entry['path']}: SHA-256 {digest.hexdigest()} does not match {RELEASE_FILE}")
        else:
            log(f"ok {entry['path']}")
    return problems


def delete(release_uri: str, *, log: Log = _quiet) -> int:
    """Remove a release (complete or not): RELEASE.json first, so it disappears atomically."""
    bucket, key_prefix, _name = split_release(release_uri)
    s3.check_bucket(bucket)
    keys = [k for k, _ in s3.iter_keys(bucket, key_prefix)]
    if not keys:
        raise ReleaseNotFoundError(f"{release_uri}: no such release")
    commit = key_prefix + RELEASE_FILE
    if commit in keys:
        s3.client().delete_object(Bucket=bucket, Key=commit)
    _delete_keys(bucket, [k for k in keys if k != commit])
    _abort_multipart_uploads(bucket, key_prefix)
    log(f"deleted {release_uri} ({len(keys)} objects)")
    return len(keys)


# ---------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dolmino release", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("publish", help="upload a finished build as an immutable release")
    p.add_argument("build_dir")
    p.add_argument("root", help="s3://bucket/prefix under which NAME/ is created")
    p.add_argument("--name", required=True)
    p.add_argument("--part-size-mb", type=int, default=DEFAULT_PART_SIZE // (1024 * 1024),
                   help="multipart part size (and threshold) in MiB, at least 5")
    p = sub.add_parser("list", help="list the complete releases under s3://bucket/prefix")
    p.add_argument("root")
    p.add_argument("--json", action="store_true", help="print the RELEASE.json records as JSON")
    p = sub.add_parser("pull", help="download and verify a release into a new directory")
    p.add_argument("release", help="s3://bucket/prefix/NAME")
    p.add_argument("dest")
    p = sub.add_parser("verify", help="re-hash a release's objects in place")
    p.add_argument("release")
    p = sub.add_parser("delete", help="remove a release (its RELEASE.json first)")
    p.add_argument("release")
    p.add_argument("--yes", action="store_true", help="required: deleting a release cannot be undone")
    return parser.parse_args(argv)


def _run(args: argparse.Namespace) -> int:
    say = print
    if args.command == "publish":
        publish(args.build_dir, args.root, args.name, part_size=args.part_size_mb * 1024 * 1024, log=say)
    elif args.command == "list":
        complete, incomplete = list_releases(args.root)
        if args.json:
            print(json.dumps(complete, indent=2))
        else:
            for rec in complete:
                m = rec.get("manifest", {})
                print(f"{rec['name']}\t{rec.get('created')}\t{len(rec['files'])} files\t{rec.get('total_bytes', 0):,} bytes"
                      f"\tmanifest={m.get('name')} seed={m.get('seed')}")
        if incomplete:
            print(f"note: ignored {len(incomplete)} incomplete upload(s) without {RELEASE_FILE}: "
                  f"{', '.join(incomplete)}", file=sys.stderr)
    elif args.command == "pull":
        pull(args.release, args.dest, log=say)
    elif args.command == "verify":
        problems = verify(args.release, log=say)
        for problem in problems:
            print(f"release: {problem}", file=sys.stderr)
        if problems:
            print(f"release: {args.release}: {len(problems)} problem(s)", file=sys.stderr)
            return 1
        print(f"{args.release}: all objects match {RELEASE_FILE}")
    elif args.command == "delete":
        if not args.yes:
            print("release: error: delete needs --yes (it cannot be undone)", file=sys.stderr)
            return 2
        delete(args.release, log=say)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except ReleaseIntegrityError as exc:
        print(f"release: error: {s3.redact(str(exc))}", file=sys.stderr)
        return 1
    except (ReleaseError, ValueError, OSError) as exc:
        print(f"release: error: {s3.redact(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - botocore errors: print sanitized, never a raw traceback
        print(f"release: error: {s3.describe_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
