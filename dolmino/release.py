"""Releases: publish a built mix to S3, then list, pull and verify it, all-or-nothing.

    dolmino release publish BUILD_DIR s3://bucket/prefix --name NAME   (or a build's s3:// --out)
    dolmino release list    s3://bucket/prefix
    dolmino release pull    s3://bucket/prefix/NAME DEST
    dolmino release verify  s3://bucket/prefix/NAME
    dolmino release delete  s3://bucket/prefix/NAME --yes
    dolmino release clean   s3://bucket/prefix/NAME [--older-than-hours H]

Layout: each publish uploads every file of the build (part-*.npy, part-*.csv.gz,
part-*.label_mask.npy, manifest.json, manifest.lock.json of a --locked build, report.json,
report.md, report.html, report-*.png, quarantine/**) under a prefix
of its own, `prefix/NAME/data/<publish id>/<relative path>`, and then commits by writing
`prefix/NAME/RELEASE.json`. RELEASE.json is the commit record: format, name, publish id,
data prefix, created (UTC), published by (user@host), dolmino version, the manifest's name/version/seed, output
totals, and for every file its path, size and SHA-256.

Why this design:
- S3 has no multi-object transactions, but a single PUT is atomic, and a conditional PUT
  (If-None-Match: *) succeeds only if the key does not exist yet. So a release *exists*
  exactly when its RELEASE.json does, and of several publishers racing on one name exactly
  one can write it; `list`, `pull` and `verify` ignore everything else.
- Each publish stages under its own unique prefix, so concurrent publishers never write,
  overwrite or delete each other's objects: the loser of the race removes only its own
  prefix and fails with a message; the winner's RELEASE.json points at the winner's
  objects, which nobody else touches. After the commit the publisher reads RELEASE.json
  back. A store that ignores If-None-Match (s3rver, older gateways) would let two publishers
  each write and read back their own record, both reporting success: so publish first
  writes a probe object (`data/<publish id>/_conditional-write-probe`) twice, the second time
  conditionally, and refuses a store that lets the second write through
  (`--allow-unconditional-store` publishes anyway, warning that two publishes of one name at
  once are then not told apart). The probe stays, part of the publish's prefix (RELEASE.json
  does not list it; verify knows it): deleting it made publish need a delete right.
- Rights: publish needs s3:PutObject, s3:GetObject and s3:ListBucket (s3:ListBucketMultipartUploads
  and s3:DeleteObject only to remove stale leftovers of earlier publishes, which it says and
  skips without them), never a delete on its success path: write-once policies for immutable
  datasets grant no delete. delete and clean need s3:DeleteObject (and s3:AbortMultipartUpload).
- An interrupted publish (killed process, lost network) leaves a prefix that no RELEASE.json
  points to: invisible. It cannot be told apart from a publish still uploading except by
  age, so it is removed only when provably stale: when nothing under it (objects, multipart
  uploads, uploaded parts) changed for `--stale-after-hours` (default 24; a live publish
  writes a part at least every few minutes), by the next `publish` or `delete` of the name,
  or on request with `clean --older-than-hours`.
- Releases are immutable; there is no --force. Overwriting in place cannot be atomic
  (readers would see new parts under the old checksums for a while) and would silently
  change data that someone already trained on. Publish under a new name, or `delete` first
  (which removes RELEASE.json before anything else, so the release vanishes at once).
- Before committing, every uploaded object is checked (HEAD: size and the sha256 recorded
  in its metadata), and every local file must be unchanged (size, mtime) since it was hashed.
- `pull` downloads into a temporary directory beside DEST, checks every size and SHA-256
  against RELEASE.json, and renames the directory into place only if all match: DEST is
  either the complete, verified release or absent. Files and directories get the modes a
  build gets (0666 / 0777 less the umask). `verify` re-hashes the objects in place.
- Keys are validated (no '..' or '.' segments, no absolute paths, no empty segments, no
  backslashes or control characters), both when publishing and when reading a RELEASE.json
  that someone else wrote, so a hostile release cannot write outside DEST.
- Messages never contain credentials: everything printed goes through dolmino.s3.redact, and
  main() is wrapped in dolmino.s3.cli_errors (S3 failures: one line, exit status 2).
- Large files use multipart upload/download (boto3 transfer manager, 64 MiB parts); a
  progress bar (bytes and files) is shown on stderr when it is a terminal.
- A build on S3 (`--out s3://...`) is published where it is: its parts are copied
  server-side with the digests of the build's commit records (`_S3Build`), the small files
  read and hashed here.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import Callable, NamedTuple

from dolmino import s3
from dolmino.argtypes import is_count
from dolmino.storage import file_above
from dolmino.memmap import PULL_OWNER, RELEASE_FILE, manifest_mismatches, unlisted_data, unlisted_parts

RELEASE_FORMAT = "dolmino-release/2"
# Format 1 kept the objects directly under NAME/ (no data prefix); such releases still read.
READABLE_FORMATS = ("dolmino-release/1", RELEASE_FORMAT)
DATA_DIR = "data"
# A finished build writes these last (dolmino.report.write_report); without them it is not one.
REQUIRED_FILES = ("manifest.json", "report.json")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_PUBLISH_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{12}$")
_TMP_RE = re.compile(r"\.tmp\d+$")
# Kept in each publish's data prefix (see `_conditional_writes`); no build file may take its name.
PROBE_FILE = "_conditional-write-probe"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_PART_SIZE = 64 * 1024 * 1024
DEFAULT_STALE_AFTER_S = 24 * 3600
_HASH_CHUNK = 8 * 1024 * 1024
_COMMIT_RETRIES = 5


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


def new_publish_id() -> str:
    """`<UTC time>-<12 random hex digits>`: unique per publish, and sorts by start time."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:12]}"


def data_prefix_of(record: dict) -> str:
    """Where a release's objects live, relative to NAME/ ('' for format 1 releases)."""
    return record.get("data_prefix", "") if record.get("format") == RELEASE_FORMAT else ""


# ---------------------------------------------------------------- local files


def sha256_file(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def check_build_names(where: str, names: list[str]) -> None:
    """The files of a build (a directory's, or the objects under an s3:// prefix, relative to
    it) are those of a finished build, each a safe key: what publish refuses before any upload."""
    for rel in names:
        try:
            validate_key(rel, "file")
        except ValueError as exc:
            # s3://b/out//notes.txt said "file '/notes.txt': must be relative, not absolute", naming neither the
            # object nor what to do (found by a tester); no build writes such a name, and no release holds one
            why = "an empty path segment ('//')" if "" in rel.split("/") else str(exc).partition(": ")[2]
            raise ReleaseError(f"{where}/{rel}: not one of the build's files, and a name no release can hold "
                               f"({why}); move it out of the build before publishing") from None
        if rel == RELEASE_FILE:
            raise ReleaseError(f"{rel}: the build already holds a {RELEASE_FILE} "
                               "(it looks like a pulled release; publish the original build)")
        if rel.endswith("/" + RELEASE_FILE):  # published, then delete and clean took it for a release inside (a tester)
            raise ReleaseError(f"{where}/{rel}: a release's commit record inside the build (a pulled release copied "
                               "into it?), which would make the release read as a releases root that delete and clean "
                               "refuse; move it out of the build before publishing")
        if rel in (PROBE_FILE, PULL_OWNER):
            raise ReleaseError(f"{where}/{rel}: a name releases reserve for their own bookkeeping; move it out of "
                               "the build")
        if _TMP_RE.search(rel):  # on S3 too: an S3 build's was released (a tester)
            raise ReleaseError(f"{rel}: a file is still being written (or a build crashed); "
                               "finish or re-run the build before publishing")
    if clash := _file_and_directory(names):
        raise ReleaseError(f"{where}: {clash[0]!r} is both an object and a directory (of {clash[1]!r}), which "
                           "no directory can hold; remove one")
    present = set(names)
    missing = [f for f in REQUIRED_FILES if f not in present]
    model = {"model.pt", "model.safetensors", "model.safetensors.index.json"} & present
    if missing and (model or any(re.fullmatch(r"step\d+/model\.pt", rel) for rel in present)):
        # "still running or was killed: rerun it" sent a checkpoint's owner to rebuild (a tester)
        raise ReleaseError(f"{where}: a model checkpoint, not a built mix: `release` publishes mixes (copy a "
                           "checkpoint, or its `python -m trainer.export_hf` directory, with your usual S3 tools)")
    if missing:
        raise ReleaseError(f"{where}: not a finished build (missing {', '.join(missing)}; a build writes "
                           "report.json last, so it is still running or was killed: rerun it)")
    if not any(rel.startswith("part-") and rel.endswith(".npy") for rel in present):
        raise ReleaseError(f"{where}: no part-*.npy token files")


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
            files.append((rel, full))
    check_build_names(build_dir, [rel for rel, _ in files])
    return sorted(files)


def _unfinished_s3_build(location: str) -> bool:
    """No report.json at `location` (one HEAD): not a finished build, which publish refuses. A build
    killed before it wrote its plan was sent to publish (only a plan without report.json counted;
    found by a tester). False when S3 cannot tell (no credentials, say): the hint below is then the help."""
    if not s3.is_s3(location):
        return False
    try:
        return s3.object_size(f"{location}/report.json") is None
    except Exception:  # noqa: BLE001 - only a hint depends on it
        return False


def _nothing_at(location: str) -> str | None:
    """What to say where `location` holds no object at all, or its bucket does not exist (one
    listing), else None. Both read as "an incomplete build ... rerun the same build command",
    since S3's HEAD answers 404 alike for a missing key and a missing bucket (found by a tester)."""
    bucket, key = s3.split_uri(location.rstrip("/") + "/")
    try:
        empty = next(s3.iter_keys(bucket, key), None) is None
    except s3.NoSuchBucket:
        return f"Bucket {bucket} does not exist (as this endpoint and credentials see it): check the URL"
    except Exception:  # noqa: BLE001 - only a hint depends on it
        return None
    return f"Nothing is stored under {location} (no build ran there): check the URL, or the build's --out" \
        if empty else None


def _is_release(location: str) -> bool:
    """A RELEASE.json at `location` (one HEAD); False when S3 cannot tell."""
    if not s3.is_s3(location):
        return False
    try:
        return s3.object_size(f"{location.rstrip('/')}/{RELEASE_FILE}") is not None
    except Exception:  # noqa: BLE001 - only a hint depends on it
        return False


def fetch_hint(location: str, then: str) -> str:
    """How to bring a build that `--out s3://` left on S3 to a local directory, which is what
    `dolmino validate` and the trainer read; `then`: what to do with it. An unfinished build
    is said to be one (publishing it would be refused for the same reason)."""
    copy = (f"`dolmino release publish {location} s3://BUCKET/releases --name NAME` (server-side copies), then "
            "`dolmino release pull s3://BUCKET/releases/NAME DIR` (every SHA-256 checked), or `aws s3 sync`; "
            f"then {then}")
    if _is_release(location):  # publish refuses a release ("publish the original build"; a tester)
        return f"{location} is a published release: `dolmino release pull {location} DIR` (every SHA-256 checked); " \
               f"then {then}"
    if _unfinished_s3_build(location):
        if (nothing := _nothing_at(location)) is not None:
            return nothing
        return (f"Besides, {location} is an incomplete build: no report.json, which a build writes last (it was "
                "interrupted or is still running, or no build ran there); rerun the same build command to finish "
                f"it, then copy it: {copy}")
    return f"Copy the build first: {copy}"


def _publisher() -> str:
    """`user@host` of this publish: RELEASE.json recorded no one, so neither `list` nor the loser of a
    race could say who published a release (found by a tester). A user the system cannot name is '?'."""
    import getpass

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no USER/LOGNAME and a uid without a passwd entry (containers)
        user = "?"
    return f"{user}@{socket.gethostname()}"


def _dolmino_version() -> str:
    try:
        from importlib.metadata import version

        return version("dolmino")
    except Exception:  # noqa: BLE001 - running from a checkout without install
        return "unknown"


def _read_build_json(build_dir: str) -> tuple[object, object]:
    """(manifest.json, report.json) of a local build."""
    docs = []
    for name in ("manifest.json", "report.json"):
        path = os.path.join(build_dir, name)
        try:
            with open(path, encoding="utf-8") as fh:
                docs.append(json.load(fh))
        except ValueError as exc:  # a torn copy: nothing is uploaded (the summary is read first)
            raise ReleaseError(f"{path}: not valid JSON ({exc}); copy or rebuild the build again") from None
    return docs[0], docs[1]


def listed_files(report: object) -> dict[str, str]:
    """name -> SHA-256 of every output file report.json certifies ({} for a report without
    the list: builds older than it)."""
    output = report.get("output", {}) if isinstance(report, dict) else {}
    listed = output.get("files_sha256") if isinstance(output, dict) else None
    return {k: v for k, v in listed.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(listed, dict) else {}


def _file_and_directory(paths) -> tuple[str, str] | None:
    """(a, a/b) where one path is also a directory of another (S3 keys can be both); else None."""
    present = set(paths)
    for path in sorted(present):
        segments = path.split("/")
        for i in range(1, len(segments)):
            if "/".join(segments[:i]) in present:
                return "/".join(segments[:i]), path
    return None


def check_listed(where: str, names: list[str], listed: dict[str, str]) -> None:
    """The build's part files are exactly those report.json lists, or ReleaseIntegrityError:
    a part deleted since, or one an earlier build left that this build did not write, would
    otherwise be released under fresh checksums (as `dolmino validate` refuses them)."""
    if not listed:
        # Every report a dolmino build writes certifies its files; a release of one that does not (a
        # report.json of `{}` was published) would carry checksums of whatever lay there (a tester).
        raise ReleaseIntegrityError(f"{where}: its report.json certifies no files (no output.files_sha256, which "
                                    "every dolmino build writes): not a build this can vouch for; rebuild it with "
                                    "this version of dolmino. Nothing was released")
    missing, stale = unlisted_parts(names, listed)
    stale = sorted(set(stale) | set(unlisted_data(names, listed)))
    if missing or stale:
        shown = [f"{n}: listed in report.json but missing" for n in missing[:5]] + \
                [f"{n}: not written by the build that report.json describes" for n in stale[:5]]
        # validate reads local directories and sends an s3:// build to publish: naming it here went round in
        # a circle (found by a tester)
        inspect = ("`aws s3 sync` it to a directory and `dolmino validate DIR` names every difference"
                   if where.startswith("s3://") else "`dolmino validate` names every difference")
        # "rebuild" for a stray file too went round in a circle: a rebuild never removes backup/part-00009.npy
        # (found by a tester); it is moved out, as `dolmino validate` says
        todo = [*(["rebuild (the same command resumes) to write the missing files"] if missing else []),
                *(["move the files it did not write out of the build"] if stale else [])]
        raise ReleaseIntegrityError(f"{where}: not the build its report.json describes ({'; '.join(shown)}"
                                    f"{'; ...' if len(missing) > 5 or len(stale) > 5 else ''}); {inspect}; "
                                    f"{' and '.join(todo)} before publishing. Nothing was released")


def report_sizes(report: object) -> dict[str, int]:
    """name -> size of the files whose size report.json states: each token file's (output.parts)
    and its label mask's (one byte per token)."""
    output = report.get("output") if isinstance(report, dict) else None
    parts = output.get("parts") if isinstance(output, dict) else None
    sizes = {}
    for part in parts if isinstance(parts, list) else ():
        if isinstance(part, dict) and isinstance(part.get("name"), str) and part["name"].endswith(".npy"):
            if is_count(part.get("size")):
                sizes[part["name"]] = part["size"]
            if is_count(part.get("tokens")):
                sizes[part["name"][:-len(".npy")] + ".label_mask.npy"] = part["tokens"]
    return sizes


def check_sizes(where: str, files: list[BuildFile], sizes: dict[str, int]) -> None:
    """Every file of a size report.json states has it, checked before the first upload: a truncated
    part was found by its digest only after everything before it was uploaded (a tester)."""
    for item in files:
        expected = sizes.get(item.path)
        if expected is not None and item.size != expected:
            raise ReleaseIntegrityError(f"{where}/{item.path}: {item.size:,} bytes, but report.json says {expected:,}: "
                                        "the file changed after the build finished (`dolmino validate` says how); "
                                        "nothing was released")


def check_digest(rel: str, digest: str, listed: dict[str, str]) -> None:
    """A file whose SHA-256 is not the one report.json certifies is not released."""
    expected = listed.get(rel)
    if expected is not None and digest != expected:
        raise ReleaseIntegrityError(f"{rel}: SHA-256 {digest[:16]}... but report.json certifies {expected[:16]}...: "
                                    "the file changed after the build finished (`dolmino validate` says how); "
                                    "nothing was released")


def report_count_errors(report: object) -> list[str]:
    """Where report.json's counts disagree with one another: each part's size and tokens (4 bytes a
    token), output.tokens and output.docs against the sum of its parts', and against the sum of its
    sources' output_tokens / output_docs. Publish checks the files against the part records only: a
    report.json whose output.tokens was edited was released, and the trainer (which plans from it)
    and `dolmino validate` refused the pulled copy (found by a tester)."""
    output = report.get("output") if isinstance(report, dict) else None
    if not isinstance(output, dict):
        return []
    errors = []
    parts = output.get("parts")
    parts = [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []
    for part in parts:
        if is_count(part.get("size")) and is_count(part.get("tokens")) and part["size"] != 4 * part["tokens"]:
            errors.append(f"output.parts' {part.get('name')} is {part['size']:,} bytes but {part['tokens']:,} tokens "
                          "(4 bytes each)")
    sources = report.get("sources")
    sources = [s for s in sources if isinstance(s, dict)] if isinstance(sources, list) else []
    for key, per_source in (("tokens", "output_tokens"), ("docs", "output_docs")):
        total = output.get(key)
        if not is_count(total):
            continue
        for what, records, field in ((f"its parts' {key}", parts, key),
                                     (f"its sources' {per_source}", sources, per_source)):
            if records and all(is_count(r.get(field)) for r in records):
                if (summed := sum(r[field] for r in records)) != total:
                    errors.append(f"output.{key} is {total:,}, but {what} sum to {summed:,}")
    return errors


def _summary(where: str, manifest, report) -> dict:
    """What RELEASE.json repeats of a build's manifest.json and report.json. The name and seed are
    report.json's (what was built); a manifest.json stating others is not the build's, and its
    name and seed were released unchecked (a tester)."""
    output = report.get("output", {}) if isinstance(report, dict) else {}
    if counts := report_count_errors(report):
        more = f" (and {len(counts) - 1} more)" if counts[1:] else ""
        raise ReleaseIntegrityError(f"{where}/report.json: {counts[0]}{more}: the report changed after the build "
                                    "finished (`dolmino validate` says how); nothing was released")
    summary = {k: manifest.get(k) for k in ("name", "version", "seed", "budget")} if isinstance(manifest, dict) else {}
    for key, theirs, built in manifest_mismatches(manifest, report)[:1]:
        raise ReleaseIntegrityError(f"{where}: manifest.json's {key} is {theirs!r}, but report.json says "
                                    f"the build's was {built!r}: manifest.json is not the build's "
                                    "(replaced since?); restore it or rebuild. Nothing was released")
    for key, built in (("name", "manifest"), ("seed", "seed")):
        if isinstance(report, dict) and report.get(built) is not None:  # older reports lack them: manifest.json's
            summary[key] = report[built]
    if isinstance(report, dict) and report.get("budget") is not None:
        summary["budget"] = report["budget"]  # what was built (--budget), not the manifest file's (a tester)
    return {
        "manifest": summary,
        "output": {k: output.get(k) for k in ("tokens", "docs", "files") if k in output},
    }


class BuildFile(NamedTuple):
    """One file of a build to publish."""

    path: str  # relative to the build: the release's key
    size: int
    source: str  # a local build's absolute path; an S3 build's object ETag


class _LocalBuild:
    """A finished build in a local directory: every file is hashed here, then uploaded."""

    def __init__(self, build_dir: str):
        self.where = os.path.abspath(build_dir)
        self.files = [BuildFile(rel, os.path.getsize(full), full) for rel, full in collect_build_files(build_dir)]

    def summary(self) -> dict:
        manifest, report = _read_build_json(self.where)
        self.listed, self.sizes = listed_files(report), report_sizes(report)
        return _summary(self.where, manifest, report)

    def sha256(self, item: BuildFile) -> str:
        return sha256_file(item.source)[0]

    def stage(self, item: BuildFile, bucket: str, key: str, config, bar: _Progress) -> tuple[str, int]:
        """Put one file at bucket/key with its SHA-256 in the metadata; (sha256, size)."""
        rel, full = item.path, item.source
        before = os.stat(full)
        digest, size = sha256_file(full)
        with s3.about(f"s3://{bucket}/{key}"):
            s3.client().upload_file(full, bucket, key, Config=config, Callback=bar.add_bytes,
                                    ExtraArgs={"Metadata": {"sha256": digest}})
        after = os.stat(full)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) or size != after.st_size:
            raise ReleaseIntegrityError(f"{rel}: the file changed while it was being published; nothing was released")
        return digest, size


@contextlib.contextmanager
def _listed(bucket: str, key: str):
    """A read pinned to the ETag the build's listing gave (IfMatch, CopySourceIfMatch) that the store
    refuses (412) means the object was rewritten since: said as such, not as the store's failure
    ("S3 HeadObject failed: PreconditionFailed (412)"; a reviewer)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is the pinned read's 412
        if s3.error_code(exc) not in ("PreconditionFailed", "412"):
            raise
        raise ReleaseIntegrityError(f"{s3.join_uri(bucket, key)}: the object was rewritten after the build was listed "
                                    "(its ETag is not the listed one); nothing was released") from None


class _S3Build:
    """A finished build under an s3:// prefix (`--out s3://...`), published without its bytes
    passing through this machine: a 50B-token mix is ~200 GB of parts.

    Parts are copied server-side (CopyObject, or UploadPartCopy for large ones), each with
    the SHA-256 of its build's commit record (`_parts/part-XXXXX.json`, written by the
    executor from the bytes it uploaded); the object's stored digest and size must agree with
    that record, and the copy is of the very object checked (CopySourceIfMatch on its ETag).
    Every other object (reports, manifest, commit records, quarantine) is small: it is read
    here, hashed and uploaded like a local file. `verify` re-hashes every object of the release."""

    def __init__(self, build_uri: str):
        self.where = build_uri.rstrip("/")
        self.bucket, self.prefix = s3.split_uri(self.where + "/")
        s3.check_bucket(self.bucket)
        objects = [o for o in s3.iter_objects(self.bucket, self.prefix) if not o["Key"].endswith("/")]
        self.files = [BuildFile(o["Key"][len(self.prefix):], int(o["Size"]), o["ETag"]) for o in objects]
        if not self.files:
            raise ReleaseError(f"{self.where}: no objects under this prefix (not a build)")
        check_build_names(self.where, [f.path for f in self.files])
        self.parts = self._committed()

    def _committed(self) -> dict[str, dict]:
        """name -> {"size", "sha256"} of every file the build's commit records name.

        Each record is read once, pinned to the ETag listed (IfMatch), and its bytes are kept:
        `stage` releases the very bytes whose digests it trusted, without a second GET."""
        committed: dict[str, dict] = {}
        self.records: dict[str, bytes] = {}
        for item in self.files:
            if item.path.startswith("_parts/") and item.path.endswith(".json"):
                key = self.prefix + item.path
                with s3.about(s3.join_uri(self.bucket, key)), _listed(self.bucket, key):  # a build still writing
                    body = s3.get_body(self.bucket, key, IfMatch=item.source)
                self.records[item.path] = body
                try:
                    record = json.loads(body)
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise ReleaseError(f"{self.where}/{item.path}: not valid JSON ({exc})") from None
                for f in record.get("files", ()) if isinstance(record, dict) else ():
                    if isinstance(f, dict) and isinstance(f.get("name"), str) \
                            and _SHA256_RE.match(str(f.get("sha256"))):
                        committed[f["name"]] = {"size": f.get("size"), "sha256": f["sha256"]}
        return committed

    def summary(self) -> dict:
        report = _get_json(self.bucket, self.prefix + "report.json")
        self.listed, self.sizes = listed_files(report), report_sizes(report)
        return _summary(self.where, _get_json(self.bucket, self.prefix + "manifest.json"), report)

    def sha256(self, item: BuildFile) -> str:
        """A part's digest from its commit record; any other (small) object is read and hashed."""
        if item.path in self.parts:
            return self.parts[item.path]["sha256"]
        body = self.records.get(item.path)
        if body is None:
            with s3.about(s3.join_uri(self.bucket, self.prefix + item.path)), \
                    _listed(self.bucket, self.prefix + item.path):
                body = s3.get_body(self.bucket, self.prefix + item.path, IfMatch=item.source)
        return hashlib.sha256(body).hexdigest()

    def stage(self, item: BuildFile, bucket: str, key: str, config, bar: _Progress) -> tuple[str, int]:
        import tempfile

        rel, size, etag = item
        cl = s3.client()
        committed = self.parts.get(rel)
        if committed is not None:
            # Both named: a HEAD or copy whose retries were spent said "S3 HeadObject failed: 503 (503): Service
            # Unavailable", naming no object of the hundreds a publish touches (found by a tester)
            with s3.about(s3.join_uri(self.bucket, self.prefix + rel)), _listed(self.bucket, self.prefix + rel):
                head = cl.head_object(Bucket=self.bucket, Key=self.prefix + rel, IfMatch=etag)
            stored = head.get("Metadata", {}).get("sha256")
            if int(head["ContentLength"]) != committed["size"] or stored != committed["sha256"]:
                raise ReleaseIntegrityError(
                    f"{self.where}/{rel}: {head['ContentLength']} bytes with "
                    f"{f'stored SHA-256 {stored}' if stored else 'no stored SHA-256 (written since by another tool)'}"
                    ", but the build's "
                    f"commit record says {committed['size']} bytes, {committed['sha256']}: the object changed after "
                    "the build checked it; nothing was released")
            with s3.about(s3.join_uri(bucket, key)), _listed(self.bucket, self.prefix + rel):
                cl.copy({"Bucket": self.bucket, "Key": self.prefix + rel}, bucket, key, Config=config,
                        Callback=bar.add_bytes, ExtraArgs={"Metadata": {"sha256": committed["sha256"]},
                                                           "MetadataDirective": "REPLACE", "CopySourceIfMatch": etag})
            return committed["sha256"], size
        record = self.records.get(rel)
        if record is not None:
            digest = hashlib.sha256(record).hexdigest()
            with s3.about(s3.join_uri(bucket, key)):
                cl.put_object(Bucket=bucket, Key=key, Body=record, Metadata={"sha256": digest})
            bar.add_bytes(len(record))
            return digest, len(record)
        with tempfile.TemporaryDirectory(prefix="dolmino-publish-") as tmp:
            local = os.path.join(tmp, "object")
            state = {}
            with open(local, "wb") as fh:
                def restart():  # a body cut off mid-read is read again from its start
                    fh.seek(0)
                    fh.truncate()
                    state.update(hasher=hashlib.sha256(), got=0)

                def take(chunk):
                    state["hasher"].update(chunk)
                    fh.write(chunk)
                    state["got"] += len(chunk)

                restart()
                with s3.about(s3.join_uri(self.bucket, self.prefix + rel)), _listed(self.bucket, self.prefix + rel):
                    s3.stream_body(self.bucket, self.prefix + rel, take, restart, _HASH_CHUNK, IfMatch=etag)
            digest, got = state["hasher"].hexdigest(), state["got"]
            with s3.about(s3.join_uri(bucket, key)):
                cl.upload_file(local, bucket, key, Config=config, Callback=bar.add_bytes,
                               ExtraArgs={"Metadata": {"sha256": digest}})
        return digest, got


# ---------------------------------------------------------------- progress


Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


class _Progress:
    """A tqdm bar of bytes with a files counter; does nothing when disabled."""

    def __init__(self, enabled: bool, desc: str, total_bytes: int, total_files: int):
        self.total_files = total_files
        self.files = 0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total_bytes, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                            file=sys.stderr, dynamic_ncols=True, leave=False)
            self.bar.set_postfix_str(f"0/{total_files} files")

    def add_bytes(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def file_done(self) -> None:
        self.files += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.files}/{self.total_files} files")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------- S3 helpers


def _transfer_config(part_size: int):
    from boto3.s3.transfer import TransferConfig

    part_size = max(int(part_size), 5 * 1024 * 1024)  # S3's minimum part size
    return TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size,
                          max_concurrency=8, use_threads=True)


def _get_json(bucket: str, key: str) -> dict | None:
    try:
        body = s3.get_bytes(s3.join_uri(bucket, key))
    except s3.NoSuchBucket:
        raise
    except s3.S3PathError:
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        remedy = ""
        if key.endswith("/" + RELEASE_FILE) or key == RELEASE_FILE:
            remedy = (f"; `dolmino release delete s3://{bucket}/{key[:-len(RELEASE_FILE) - 1]} --yes` removes the "
                      "release it should commit")
        raise ReleaseError(f"s3://{bucket}/{key}: not valid JSON ({exc}){remedy}") from None


def _abort_uploads(bucket: str, uploads: list[dict]) -> None:
    for upload in uploads:
        s3.abort_upload(bucket, upload)


def _remove_prefix(bucket: str, prefix: str) -> int:
    """Delete every object and unfinished multipart upload under `prefix`; returns the object count."""
    keys = [k for k, _ in s3.iter_keys(bucket, prefix)]
    s3.delete_keys(bucket, keys)
    _abort_uploads(bucket, s3.multipart_uploads(bucket, prefix))
    return len(keys)


def parse_release_record(record: object, where: str, name: str | None = None) -> dict:
    """Check a RELEASE.json someone else wrote before trusting any path or checksum in it."""
    if not isinstance(record, dict) or record.get("format") not in READABLE_FORMATS:
        raise ReleaseError(f"{where}: not a {RELEASE_FORMAT} record")
    if name is not None and record.get("name") != name:
        raise ReleaseError(f"{where}: records name {record.get('name')!r}, expected {name!r}")
    if record["format"] == RELEASE_FORMAT:
        publish_id = record.get("publish_id")
        if not isinstance(publish_id, str) or not _PUBLISH_ID_RE.match(publish_id) \
                or record.get("data_prefix") != f"{DATA_DIR}/{publish_id}/":
            raise ReleaseError(f"{where}: 'publish_id' / 'data_prefix' are missing or do not match")
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
        # `.pull-owner` is pull's own: pull downloaded such an entry, then removed it, and said success (a tester)
        if path in (RELEASE_FILE, PULL_OWNER) or path in seen:
            raise ReleaseError(f"{where}: files[{i}].path {path!r} is reserved or listed twice")
        seen.add(path)
        if not isinstance(entry.get("size"), int) or isinstance(entry.get("size"), bool) or entry["size"] < 0:
            raise ReleaseError(f"{where}: files[{i}].size must be a non-negative integer")
        if not isinstance(entry.get("sha256"), str) or not _SHA256_RE.match(entry["sha256"]):
            raise ReleaseError(f"{where}: files[{i}].sha256 must be 64 lower-case hex digits")
    if clash := _file_and_directory(seen):  # a raw "[Errno 17] File exists" half-way through a pull (a tester)
        raise ReleaseError(f"{where}: {clash[0]!r} is listed both as a file and as a directory (of {clash[1]!r}); "
                           "no directory can hold both")
    return record


def read_release(release_uri: str) -> dict:
    """The RELEASE.json of a complete release; a clear error for missing or half-published ones."""
    bucket, key_prefix, name = split_release(release_uri)
    record = _get_json(bucket, key_prefix + RELEASE_FILE)
    if record is None:
        below = [key[len(key_prefix):] for key, _size in itertools.islice(s3.iter_keys(bucket, key_prefix), 10_000)]
        nested = _nested_releases(below)
        if nested:  # a releases root read as an interrupted publish (a tester)
            raise ReleaseNotFoundError(f"{release_uri} holds other releases ({', '.join(nested[:5])}): name one "
                                       "release, not a releases root")
        if below:
            raise ReleaseNotFoundError(f"{release_uri}: incomplete release (objects but no {RELEASE_FILE}: "
                                       "a publish was interrupted or is still running)")
        raise ReleaseNotFoundError(f"{release_uri}: no such release")
    return parse_release_record(record, f"{release_uri}/{RELEASE_FILE}", name)


# ---------------------------------------------------------------- leftovers


def _nested_releases(rels) -> list[str]:
    """The releases committed below a prefix, by name (`rels`: keys relative to it): read,
    publish, clean and delete each refuse a releases root by this one rule."""
    return sorted({rel.rsplit("/", 1)[0] for rel in rels if rel.endswith("/" + RELEASE_FILE)})


def _group_of(rel: str) -> str | None:
    """Objects of one publish share `data/<publish id>/`: the only place a publish writes besides
    RELEASE.json. Anything else is not a publish's (None): given a releases root or a build's
    --out instead of a release, clean and delete removed every committed release below it as
    "leftovers" (found by a tester)."""
    parts = rel.split("/")
    if len(parts) >= 3 and parts[0] == DATA_DIR and _PUBLISH_ID_RE.match(parts[1]):
        return f"{DATA_DIR}/{parts[1]}/"
    return None


def _check_is_release(bucket: str, key_prefix: str, release_uri: str,
                      record: dict | None) -> tuple[list[str], bool]:
    """Refuse a prefix holding other releases' commit records (a releases root, a release
    published inside another). Returns, from one listing, the objects below it no publish
    writes (a build's files, a format-1 publish's loose leftovers), which clean and delete
    leave alone, and whether any publish's staged objects are there. A format-1 release's
    own files lie directly under NAME/ (its record lists them)."""
    own = {e["path"] for e in record["files"]} if record is not None and not data_prefix_of(record) else set()
    nested, foreign, staged = [], [], False
    for key, _size in s3.iter_keys(bucket, key_prefix):
        rel = key[len(key_prefix):]
        if rel == RELEASE_FILE or rel in own:
            continue
        if rel.endswith("/" + RELEASE_FILE):  # also below data/<id>/: a release named like a publish id
            nested.append(rel)  # was taken for staged objects and deleted by clean (found by a tester)
        elif _group_of(rel) is not None:
            staged = True
        else:
            foreign.append(rel)
    if nested:
        names = ", ".join(_nested_releases(nested)[:5])
        raise ReleaseError(f"{release_uri} holds other releases ({names}): name one release, not a releases root; "
                           "nothing was removed")
    return foreign, staged


def _foreign_note(release_uri: str, foreign: list[str]) -> str:
    return (f"{release_uri}: note: left {len(foreign)} object(s) alone that no publish writes (e.g. {foreign[0]}); "
            "remove them by hand if they are yours to remove")


def _leftover_groups(bucket: str, key_prefix: str, record: dict | None) -> dict[str, dict]:
    """Groups under NAME/ that `record` does not reference: {group: {"keys", "uploads", "last"}}.

    `last` is the latest change in the group: object LastModified, multipart upload
    Initiated, and the LastModified of every part uploaded so far (a live publish uploading
    one big file shows no finished object for a long time, but a new part every few minutes).
    """
    referenced_group = data_prefix_of(record) if record is not None else ""
    referenced_keys = {RELEASE_FILE}
    if record is not None and not referenced_group:
        referenced_keys |= {e["path"] for e in record["files"]}
    groups: dict[str, dict] = {}

    def group(rel: str) -> dict | None:
        name = _group_of(rel)
        if name is None or rel in referenced_keys or name == referenced_group:
            return None
        return groups.setdefault(name, {"keys": [], "uploads": [], "last": datetime.min.replace(tzinfo=timezone.utc)})

    releases = set()  # groups holding a commit record: another release, never a leftover
    for obj in s3.iter_objects(bucket, key_prefix):
        rel = obj["Key"][len(key_prefix):]
        g = group(rel)
        if g is not None:
            g["keys"].append(obj["Key"])
            g["last"] = max(g["last"], obj["LastModified"])
            if rel.endswith("/" + RELEASE_FILE):
                releases.add(_group_of(rel))
    for name in releases:
        del groups[name]
    cl = s3.client()
    for upload in s3.multipart_uploads(bucket, key_prefix):
        g = group(upload["Key"][len(key_prefix):])
        if g is None:
            continue
        g["uploads"].append(upload)
        g["last"] = max(g["last"], upload["Initiated"])
        for page in cl.get_paginator("list_parts").paginate(Bucket=bucket, Key=upload["Key"],
                                                            UploadId=upload["UploadId"]):
            for part in page.get("Parts", ()):
                g["last"] = max(g["last"], part["LastModified"])
    return groups


def _clean_leftovers(bucket: str, key_prefix: str, older_than_s: float, release_uri: str, log: Log) -> int:
    """Remove the groups no RELEASE.json references that were idle for `older_than_s`.

    RELEASE.json is read here, just before listing, so a publish that commits meanwhile
    keeps its objects (they are fresh, and only 0 would remove fresh groups). Returns the
    number of objects removed.
    """
    record = _get_json(bucket, key_prefix + RELEASE_FILE)
    if record is not None:
        record = parse_release_record(record, f"{release_uri}/{RELEASE_FILE}")
    groups = _leftover_groups(bucket, key_prefix, record)
    now = datetime.now(timezone.utc)
    removed = kept = 0
    for name, g in sorted(groups.items()):
        idle = (now - g["last"]).total_seconds()
        if idle >= older_than_s:
            s3.delete_keys(bucket, g["keys"])
            _abort_uploads(bucket, g["uploads"])
            removed += len(g["keys"])
            log(f"{release_uri}: removed {name} ({len(g['keys'])} object(s), {len(g['uploads'])} unfinished "
                f"upload(s)), left by a publish that stopped {idle / 3600:.1f} h ago")
        else:
            kept += 1
    if kept:
        # said no more: after a kill -9 its owner knows none is running, and was not told how to remove them (a tester)
        log(f"{release_uri}: note: left {kept} staged upload(s) alone: they changed in the last "
            f"{older_than_s / 3600:g} h, so another publish may still be running (if none is, `dolmino release clean "
            f"{release_uri} --older-than-hours 0` removes them now)")
    return removed


# ---------------------------------------------------------------- commands


def _is_conditional_failure(exc: BaseException) -> str:
    code = s3.error_code(exc)
    return code if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409") else ""


def _conditional_writes(bucket: str, key: str) -> str:
    """How the store treats a PUT with If-None-Match: * of an existing key: "honoured" (refused,
    as the commit needs), "ignored" (written over) or "unsupported" (NotImplemented). Writes
    `key` twice (the second time conditionally) and leaves it: deleting it made publish need a
    delete right, which write-once publishers lack (a tester)."""
    from botocore.exceptions import ClientError

    cl = s3.client()
    uri = s3.join_uri(bucket, key)
    with s3.about(uri):  # a read-only user's "S3 PutObject failed: AccessDenied" named no key (a tester)
        cl.put_object(Bucket=bucket, Key=key, Body=b"probe 1\n")
    try:
        cl.put_object(Bucket=bucket, Key=key, Body=b"probe 2\n", IfNoneMatch="*")
        return "ignored"
    except ClientError as exc:
        if _is_conditional_failure(exc):
            return "honoured"
        if s3.not_implemented(exc):
            return "unsupported"
        raise s3.named_failure(uri, exc) from None


def _denied(exc: BaseException) -> bool:
    """A request S3 refused for want of the right (DeleteObjects says so per key, in its message)."""
    if isinstance(exc, s3.S3DeleteError):
        return "AccessDenied" in str(exc)
    return s3.error_code(exc) in ("AccessDenied", "403")


def _same_content(source, record: dict) -> bool:
    """Whether the committed `record` holds exactly the build's files: the same paths and sizes, and
    the digests report.json certifies (other files, all small, are hashed here)."""
    committed = {e["path"]: (e["size"], e["sha256"]) for e in record["files"]}
    if set(committed) != {item.path for item in source.files}:
        return False
    return all(committed[item.path][0] == item.size for item in source.files) and all(
        committed[item.path][1] == (source.listed.get(item.path) or source.sha256(item)) for item in source.files)


def publish(build_dir: str, root_uri: str, name: str, *, part_size: int = DEFAULT_PART_SIZE,
            log: Log = _quiet, progress: bool = False, stale_after_s: float = DEFAULT_STALE_AFTER_S,
            allow_unconditional_store: bool = False) -> dict:
    """Upload a finished build as release NAME under root_uri; returns the RELEASE.json record.

    Raises ReleaseExistsError if the release exists, or if another publish of the same name
    commits first (this publish's objects are then removed again). Needs s3:PutObject,
    s3:GetObject and s3:ListBucket, no delete right (the module docstring's "Rights").
    """
    validate_name(name)
    bucket, prefix = split_root(root_uri)
    key_prefix = f"{prefix}{name}/"
    release_uri = s3.join_uri(bucket, key_prefix.rstrip("/"))
    source = _S3Build(build_dir) if s3.is_s3(build_dir) else _LocalBuild(build_dir)
    if isinstance(source, _S3Build) and bucket == source.bucket and key_prefix.startswith(source.prefix):
        raise ReleaseError(f"{release_uri}: inside the build {source.where} it would publish; "
                           "put releases under another prefix")
    files = source.files
    summary = source.summary()  # before any upload: a torn report.json stops the publish here
    check_listed(source.where, [f.path for f in files], source.listed)
    check_sizes(source.where, files, source.sizes)
    s3.check_bucket(bucket)

    def exists_error() -> ReleaseExistsError:
        return ReleaseExistsError(f"{release_uri}: release already exists; releases are immutable "
                                  "(publish under a new name, or `dolmino release delete` it first)")

    def refuse_existing(existing: dict) -> None:
        try:
            same = _same_content(source, parse_release_record(existing, f"{release_uri}/{RELEASE_FILE}", name))
        except ReleaseError:
            same = False
        if same:  # a CI retry could not tell this from a clash (a tester); still an error: nothing was published
            raise ReleaseExistsError(f"{release_uri}: release already exists with the same content (every file's "
                                     "size and SHA-256 match this build): nothing to publish")
        raise exists_error()

    if (existing := _get_json(bucket, key_prefix + RELEASE_FILE)) is not None:
        refuse_existing(existing)
    parts = key_prefix.split("/")[:-2]
    for above in ("/".join(parts[:i]) + "/" for i in range(1, len(parts) + 1)):
        if _get_json(bucket, above + RELEASE_FILE) is not None:  # its clean would take this for leftovers
            raise ReleaseError(f"{release_uri}: inside the release s3://{bucket}/{above.rstrip('/')}; publish "
                               "releases side by side under a releases root, not into one")
    # Nor over releases: NAME/ a releases root became a release, and every later publish under the root,
    # and its delete, were refused (found by a tester).
    held = [key[len(key_prefix):] for key, _size in s3.iter_keys(bucket, key_prefix)]
    # A publish of this name that committed since the read above: the loser of two at once was told its
    # RELEASE.json was "no publish's" object, "not a release (a build's --out?)" (seen under load in a test).
    if RELEASE_FILE in held and (existing := _get_json(bucket, key_prefix + RELEASE_FILE)) is not None:
        refuse_existing(existing)
    if below := _nested_releases(held):
        raise ReleaseError(f"{release_uri} holds other releases ({', '.join(below[:5])}): it is a releases root; "
                           "publish under a name of its own beside them")
    # Nor into another build's --out: it reported success and broke the build (a tester). A folder
    # marker (a console's "Create folder") is nobody's data.
    if foreign := [rel for rel in held if _group_of(rel) is None and rel not in ("", RELEASE_FILE)
                   and not rel.endswith("/")]:
        raise ReleaseError(f"{release_uri} holds {len(foreign)} object(s) no publish writes (e.g. {foreign[0]}): "
                           "not a release (a build's --out?); publish under another name. Nothing was uploaded")
    try:
        _clean_leftovers(bucket, key_prefix, stale_after_s, release_uri, log)
    except Exception as exc:  # noqa: BLE001 - only AccessDenied: clean-up is not this publish's job
        if not _denied(exc):
            raise
        log(f"{release_uri}: note: could not remove stale staged objects of earlier publishes ("
            f"{s3.s3_failure_message(exc) or s3.redact(str(exc))}); `dolmino release clean {release_uri} "
            f"--older-than-hours {stale_after_s / 3600:g}` by someone with the right to delete removes them")

    publish_id = new_publish_id()
    data_prefix = f"{DATA_DIR}/{publish_id}/"
    staging = key_prefix + data_prefix
    conditional = _conditional_writes(bucket, staging + PROBE_FILE)
    if conditional != "honoured":
        what = ("ignores If-None-Match on PUT (a conditional write of an existing object went through)"
                if conditional == "ignored" else "does not implement If-None-Match on PUT (it answered NotImplemented)")
        if not allow_unconditional_store:
            try:
                s3.delete_keys(bucket, [staging + PROBE_FILE])
            except Exception:  # noqa: BLE001 - a staged object like any other: clean removes it once stale
                pass
            raise ReleaseError(
                f"s3://{bucket}: this store {what}, so two publishes of one name at once could both report success "
                "and the later one silently replace the release. Nothing was uploaded. Use a store with conditional "
                "writes (AWS S3, Cloudflare R2, GCS, recent MinIO and Ceph), or pass --allow-unconditional-store "
                "if no other publish of this name can run at the same time")
        log(f"{release_uri}: warning: the store {what.split(' (')[0]}; publishing anyway "
            "(--allow-unconditional-store): a publish of this name running at the same time would not be detected")
    cl = s3.client()
    config = _transfer_config(part_size)
    entries = []
    commit_attempted = False
    bar = _Progress(progress, f"publish {name}", sum(item.size for item in files), len(files))
    try:
        for item in files:
            rel = item.path
            digest, size = source.stage(item, bucket, staging + rel, config, bar)
            check_digest(rel, digest, source.listed)
            entries.append({"path": rel, "size": size, "sha256": digest})
            bar.file_done()
            copied = isinstance(source, _S3Build) and rel in source.parts  # server-side, never through here
            log(f"{'copied' if copied else 'uploaded'} {rel} ({size:,} bytes)")

        # Pre-commit check: what is on S3 now is what we hashed.
        for entry in entries:
            with s3.about(s3.join_uri(bucket, staging + entry["path"])):
                head = cl.head_object(Bucket=bucket, Key=staging + entry["path"])
            if int(head["ContentLength"]) != entry["size"] or head.get("Metadata", {}).get("sha256") != entry["sha256"]:
                raise ReleaseIntegrityError(f"{entry['path']}: object changed during publish "
                                            f"(size {head['ContentLength']} vs {entry['size']}); nothing was released")

        record = {
            "format": RELEASE_FORMAT,
            "name": name,
            "publish_id": publish_id,
            "data_prefix": data_prefix,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "published_by": _publisher(),
            "dolmino_version": _dolmino_version(),
            **summary,
            "total_bytes": sum(e["size"] for e in entries),
            "files": entries,
        }
        body = json.dumps(record, indent=2, sort_keys=False).encode("utf-8") + b"\n"
        commit_attempted = True
        current = _commit(bucket, key_prefix + RELEASE_FILE, body, conditional != "unsupported")
        if current is None or current.get("publish_id") != publish_id:
            raise _LostRace(current)
    except _LostRace as lost:
        # The read-back shows RELEASE.json does not point at our prefix: removing it is safe.
        bar.close()
        winner = lost.args[0]
        removed = _remove_prefix(bucket, staging)
        if winner is None:
            raise ReleaseError(f"{release_uri}: the commit did not take effect (the store kept answering "
                               f"409 Conflict); this publish's {removed} uploaded object(s) were removed. "
                               "Try again.") from None
        ours = {(e["path"], e["size"], e["sha256"]) for e in entries}
        theirs = winner.get("files") if isinstance(winner.get("files"), list) else []
        if ours == {(e.get("path"), e.get("size"), e.get("sha256")) for e in theirs if isinstance(e, dict)}:
            # two runs of one CI job were told "publish under another name" as if they clashed (a tester)
            raise ReleaseExistsError(
                f"{release_uri}: another publish of this name committed the same content first (publish id "
                f"{winner.get('publish_id', '?')} by {winner.get('published_by', '?')}; every file's size and SHA-256 "
                f"match this build); this publish's {removed} uploaded object(s) were removed again: nothing to "
                "publish") from None
        raise ReleaseExistsError(
            f"{release_uri}: another publish of this name committed first (publish id "
            f"{winner.get('publish_id', '?')}, created {winner.get('created', '?')} by "
            f"{winner.get('published_by', '?')}); this publish's {removed} uploaded object(s) were removed again. "
            "Publish under another name.") from None
    except BaseException:
        bar.close()
        if commit_attempted:
            # The commit may have landed even though we saw an error: never remove objects a
            # RELEASE.json may point at.
            try:
                current = _get_json(bucket, key_prefix + RELEASE_FILE)
            except Exception:  # noqa: BLE001 - cannot tell: keep everything
                log(f"{release_uri}: could not tell whether this publish committed; its objects under "
                    f"{data_prefix} were kept. Check with `dolmino release verify {release_uri}`")
                raise
            if isinstance(current, dict) and current.get("publish_id") == publish_id:
                log(f"{release_uri}: this publish was committed (RELEASE.json is ours) before the error below")
                raise
        # Our own staging prefix, referenced by nothing: removing it is always safe.
        try:
            _remove_prefix(bucket, staging)
        except Exception:  # noqa: BLE001 - the network may be what failed; stale cleanup will do it
            log(f"{release_uri}: could not remove this publish's staged objects under {data_prefix}; "
                "a later publish or `dolmino release clean` removes them once they are stale")
        raise
    bar.close()
    log(f"released {release_uri} ({len(entries)} files, {record['total_bytes']:,} bytes)")
    return record


def _commit(bucket: str, key: str, body: bytes, conditional: bool = True) -> dict | None:
    """Write RELEASE.json if it does not exist yet, then return what RELEASE.json holds.

    The caller compares the publish id: a failed condition, a botocore retry of our own write
    that landed (412 on the retry), a connection lost with the answer, or a store that ignores
    If-None-Match all resolve the same way, by reading back what is there.
    """
    from botocore.exceptions import ClientError

    cl = s3.client()
    for attempt in range(_COMMIT_RETRIES):
        try:
            # Unconditional only on a store that does not implement the condition, when the user
            # allowed it (--allow-unconditional-store): the read-back below still decides.
            extra = {"IfNoneMatch": "*"} if conditional else {}
            cl.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", **extra)
            break
        except ClientError as exc:
            code = _is_conditional_failure(exc)
            if not code:
                raise s3.named_failure(s3.join_uri(bucket, key), exc) from None
            # 409: a conditional write of the same key is in flight; S3 asks to retry.
            if code in ("ConditionalRequestConflict", "409") and attempt + 1 < _COMMIT_RETRIES \
                    and _get_json(bucket, key) is None:
                time.sleep(0.2 * (attempt + 1))
                continue
            break
        except Exception as exc:  # noqa: BLE001 - re-raised unless the answer, not the write, was lost
            # A connection closed after the store took the write (every retry's answer lost too) failed a publish
            # whose RELEASE.json was its own, exit 2 (found by a tester through a proxy): what landed decides.
            if s3.s3_failure_message(exc) is None:
                raise
            landed = _get_json(bucket, key)
            if landed is None:
                raise s3.named_failure(s3.join_uri(bucket, key), exc) from None
            return landed
    return _get_json(bucket, key)


class _LostRace(Exception):
    """Another publish committed RELEASE.json first."""


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
        try:
            record = _get_json(bucket, sub + RELEASE_FILE)
        except ReleaseError:  # torn JSON: one release, not the whole listing (found by a tester)
            incomplete.append(name)
            continue
        if record is None:
            # only a prefix holding a publish's staged objects is an incomplete upload; another
            # release root or a build's --out beside the releases is not (found by a tester)
            if f"{sub}{DATA_DIR}/" in s3.list_prefixes(bucket, sub):
                incomplete.append(name)
            continue
        try:
            complete.append(parse_release_record(record, s3.join_uri(bucket, sub + RELEASE_FILE), name))
        except ReleaseError:
            incomplete.append(name)
    # S3 lists `NAME/` in key order, where '/' sorts after '-' and '.': v1 came after v1-rc and v1.0 (a tester)
    return sorted(complete, key=lambda rec: rec["name"]), sorted(incomplete)


def _check_local(path: str, entry: dict) -> None:
    digest, size = sha256_file(path)
    if size != entry["size"]:
        raise ReleaseIntegrityError(f"{entry['path']}: size {size:,} bytes, RELEASE.json says {entry['size']:,}")
    if digest != entry["sha256"]:
        raise ReleaseIntegrityError(f"{entry['path']}: SHA-256 {digest} does not match RELEASE.json ({entry['sha256']})")




def _pid_namespace() -> str:
    """This process's PID namespace (Linux), or "-" where it cannot be told."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"


def _pull_stem(name: str) -> str:
    """`.<DEST's name>.pull-`: the start of the temporary directories of pulls into DEST. A long
    name is cut, a hash of it kept, so any DEST that can be created can be pulled into: a
    250-character one failed with "[Errno 36] File name too long" (a tester)."""
    if len(os.fsencode(name)) > 200:
        name = f"{name[:40]}~{hashlib.sha256(os.fsencode(name)).hexdigest()[:16]}"
    return f".{name}.pull-"


def _pull_remedy(exc: OSError, parent: str, total: int) -> str:
    """What to do about a pull that filled DEST's disk or found it read-only: "writing ... failed: No space left
    on device (nothing was kept)" said neither how much room the release needs nor what then (a tester)."""
    from dolmino.manifest import format_bytes

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f": free space in {parent} (the release holds {format_bytes(total)}) or pull into a larger disk, "
                "then pull again")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f": make {parent} writable or pull into a directory you can write, then pull again"
    return ""


def _remove_dead_pulls(parent: str, name: str, log: Log) -> None:
    """Remove the temporary directories of earlier pulls into `name` whose process is gone: a
    killed pull left one (the size of the release) beside DEST, which no later pull reused or
    removed (found by a tester). Another host's, or a live one's, is left alone."""
    import glob

    host, namespace = socket.gethostname(), _pid_namespace()
    for tmp in glob.glob(os.path.join(glob.escape(parent), f"{glob.escape(_pull_stem(name))}*")):
        try:
            with open(os.path.join(tmp, PULL_OWNER), encoding="utf-8") as fh:
                owner_host, pid, owner_namespace = fh.read().split()
            pid = int(pid)
        except (OSError, ValueError):
            continue  # not ours to judge
        # Another host's, or another PID namespace's (containers of one pod share a host name):
        # its pid means nothing here, and a live download was removed (found by a reviewer).
        if owner_host != host or owner_namespace != namespace or namespace == "-":
            continue
        try:
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"removed {tmp}: the partial download of an earlier pull that was killed (pid {pid})")


def _is_cwd(path: str) -> bool:
    try:
        return os.path.samefile(path, os.getcwd())
    except OSError:  # the current directory was removed
        return False


def _pulled_record(dest: str) -> dict | None:
    """The RELEASE.json a pull left in `dest`, if it holds a readable one."""
    try:
        with open(os.path.join(dest, RELEASE_FILE), encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _missing_or_resized(dest: str, files: list[dict]) -> str | None:
    """What a pulled copy in `dest` lacks of the release's `files` (its checked RELEASE.json's), by a stat each:
    the first file missing or of another size, and how many more; None when all are there at their size."""
    damaged = []
    for entry in files:
        try:
            size = os.stat(os.path.join(dest, entry["path"])).st_size
        except OSError:
            size = None
        if size != entry["size"]:
            damaged.append(f"{entry['path']} is missing" if size is None else
                           f"{entry['path']} is {size:,} bytes, not {entry['size']:,}")
    if not damaged:
        return None
    more = f" (and {len(damaged) - 1} more file(s) missing or of other sizes)" if len(damaged) > 1 else ""
    return damaged[0] + more


def pull(release_uri: str, dest: str, *, part_size: int = DEFAULT_PART_SIZE, log: Log = _quiet,
         progress: bool = False) -> dict:
    """Download and verify a release into DEST (which must not exist, or be an empty directory).

    All files land in a temporary directory beside DEST first; only when every size and
    SHA-256 matches is it renamed to DEST, so DEST is never a partial or corrupt release.
    """
    from botocore.exceptions import ClientError

    bucket, key_prefix, _name = split_release(release_uri)
    dest = os.path.abspath(dest)
    if os.path.lexists(dest) and not (os.path.isdir(dest) and not os.path.islink(dest) and not os.listdir(dest)):
        held = _pulled_record(dest)
        published = read_release(release_uri) if held is not None and held.get("name") == _name else {}
        if published and held.get("publish_id") == published.get("publish_id"):
            if (damage := _missing_or_resized(dest, published["files"])) is not None:
                # "already holds this release" of a copy whose report.json was removed, which validate and the
                # trainer then said to pull again (a tester)
                raise ReleaseIntegrityError(f"{dest}: holds this release's {RELEASE_FILE} (publish id "
                                            f"{held['publish_id']}), but since the pull {damage}: remove {dest} and "
                                            "pull again, or pull into a new directory")
            # "pull into a new directory" sent a node that already held the release to download it again (a tester)
            raise ReleaseExistsError(f"{dest}: already holds this release (publish id {held['publish_id']}, pulled "
                                     f"before): nothing to pull; `dolmino validate {dest}` re-checks its parts")
        raise ReleaseError(f"{dest}: already exists" + (
            f" (holding release {held.get('name')!r}, publish id {held.get('publish_id')})" if held is not None
            else "") + "; pull into a new directory")
    if os.path.isdir(dest) and os.path.ismount(dest):  # the download went to the parent's disk, then failed
        raise ReleaseError(f"{dest}: a mount point, which a finished pull cannot be renamed onto; pull into a "
                           f"new directory inside it (e.g. {os.path.join(dest, _name)})")  # (a tester)
    if os.path.isdir(dest) and _is_cwd(dest):
        # The finished download replaced it by a rename: the shell that ran `pull ... .` was left in a deleted
        # directory, where `ls` showed nothing after "pulled ... (N files, all SHA-256 verified)" (a tester)
        raise ReleaseError(f"{dest}: the current directory, which a finished pull would replace (leaving this shell "
                           f"in a deleted directory); pull into a new directory (e.g. {os.path.join(dest, _name)}), "
                           "or run the pull from outside it")
    record = read_release(release_uri)
    objects = key_prefix + data_prefix_of(record)
    parent = os.path.dirname(dest)
    above = file_above(dest)
    if above is not None:
        raise ReleaseError(f"{dest}: {above} is a file, not a directory; pull into a directory path")
    # os.mkdir honours the umask (0777 & ~umask, as the build's directories); mkdtemp would give 0700.
    tmp = os.path.join(parent, f"{_pull_stem(os.path.basename(dest))}{uuid.uuid4().hex[:12]}")
    try:
        os.makedirs(parent, exist_ok=True)
        _remove_dead_pulls(parent, os.path.basename(dest), log)
        os.mkdir(tmp)
    except OSError as exc:  # "[Errno 13] Permission denied: '/data/.x.pull-...'" said neither whose nor why (a tester)
        raise ReleaseError(f"{dest}: cannot create {exc.filename or tmp} ({exc.strerror or exc}; pull downloads into "
                           "a directory beside DEST, then renames it): pull into a directory you can write") from None
    with open(os.path.join(tmp, PULL_OWNER), "w", encoding="utf-8") as fh:
        fh.write(f"{socket.gethostname()} {os.getpid()} {_pid_namespace()}\n")
    total = record.get("total_bytes") or sum(e["size"] for e in record["files"])
    bar = _Progress(progress, f"pull {_name}", total, len(record["files"]))
    try:
        cl = s3.client()
        config = _transfer_config(part_size)
        for entry in record["files"]:
            local = os.path.join(tmp, *entry["path"].split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with s3.about(f"s3://{bucket}/{objects}{entry['path']}"):  # botocore's message names no object
                try:
                    cl.download_file(bucket, objects + entry["path"], local, Config=config, Callback=bar.add_bytes)
                except OSError as exc:  # "[Errno 28] No space left on device" named no file (a tester)
                    raise ReleaseError(f"{dest}: writing {entry['path']} into {tmp} failed: {exc.strerror or exc} "
                                       f"(nothing was kept){_pull_remedy(exc, parent, total)}") from None
                except ClientError as exc:
                    if s3.is_missing_object(exc):
                        if _get_json(bucket, key_prefix + RELEASE_FILE) is None:  # "damaged" sent teams
                            raise ReleaseNotFoundError(f"{release_uri}: deleted while this pull ran ({entry['path']}"
                                                       " was gone); nothing was kept") from None  # hunting (a tester)
                        raise ReleaseIntegrityError(
                            f"{entry['path']}: listed in {RELEASE_FILE} but missing from s3://{bucket}/{objects}; "
                            f"the release is damaged; nothing was kept at {dest}") from None
                    raise
            try:
                _check_local(local, entry)
            except ReleaseIntegrityError as exc:  # named neither the release nor DEST's state (a tester)
                raise ReleaseIntegrityError(f"{exc}: the release is damaged, or this download was; nothing was kept at "
                                            f"{dest} (`dolmino release verify {release_uri}` tells which, re-hashing "
                                            "every object in place)") from None
            bar.file_done()
            log(f"verified {entry['path']} ({entry['size']:,} bytes)")
        with open(os.path.join(tmp, RELEASE_FILE), "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2)
            fh.write("\n")
        os.remove(os.path.join(tmp, PULL_OWNER))
        try:
            if os.path.isdir(dest):
                os.rmdir(dest)  # empty (checked above); rename cannot replace a directory portably
            os.rename(tmp, dest)
        except OSError:  # another pull into DEST finished first: "[Errno 39] Directory not empty" (a reviewer)
            raise ReleaseError(f"{dest}: already exists (another pull into it finished first?); pull into a new "
                               "directory") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    log(f"pulled {release_uri} into {dest} ({len(record['files'])} files, all SHA-256 verified)")
    return record


def verify(release_uri: str, *, log: Log = _quiet, progress: bool = False) -> list[str]:
    """Re-hash every object of a release in place; returns the problems found (empty = good)."""
    from botocore.exceptions import ClientError

    bucket, key_prefix, _name = split_release(release_uri)
    record = read_release(release_uri)
    objects = key_prefix + data_prefix_of(record)
    problems = []
    listed = {objects + e["path"] for e in record["files"]} | {key_prefix + RELEASE_FILE}
    if data_prefix_of(record):
        listed.add(objects + PROBE_FILE)  # the publish's own, kept (see `_conditional_writes`)
    staged = foreign = 0
    for key, _size in s3.iter_keys(bucket, key_prefix):
        rel = key[len(key_prefix):]
        if key in listed:
            continue
        if key.startswith(objects) and _group_of(rel) == (data_prefix_of(record) or rel):
            problems.append(f"{rel}: object is not listed in {RELEASE_FILE}")  # inside the release's own prefix
        elif _group_of(rel) is not None:
            staged += 1  # staged by another (interrupted or losing) publish: not part of this release
        else:
            foreign += 1
    if staged:
        log(f"note: {staged} object(s) under {release_uri}/ belong to no release (other or interrupted "
            "publishes; `dolmino release clean` removes them once stale)")
    if foreign:  # said "clean removes them", which it never does (a tester)
        log(f"note: {foreign} object(s) under {release_uri}/ belong to no release and no publish writes them; "
            "`dolmino release clean` leaves them alone: remove them by hand if they are yours to remove")
    bar = _Progress(progress, f"verify {_name}", sum(e["size"] for e in record["files"]), len(record["files"]))
    try:
        for entry in record["files"]:
            state = {}

            def restart():  # a body cut off mid-read is read again from its start (a tester)
                state.update(digest=hashlib.sha256(), size=0)

            def take(chunk):
                state["digest"].update(chunk)
                state["size"] += len(chunk)
                bar.add_bytes(len(chunk))

            restart()
            try:
                s3.stream_body(bucket, objects + entry["path"], take, restart, _HASH_CHUNK)
            except ClientError as exc:
                if s3._is_missing(exc):  # noqa: SLF001
                    problems.append(f"{entry['path']}: object is missing")
                    continue
                raise s3.named_failure(s3.join_uri(bucket, objects + entry["path"]), exc) from None
            except s3.cut_off_errors() as exc:  # its message named no object (a tester)
                raise s3.named_failure(s3.join_uri(bucket, objects + entry["path"]), exc) from None
            digest, size = state["digest"], state["size"]
            bar.file_done()
            if size != entry["size"]:
                problems.append(f"{entry['path']}: size {size:,} bytes, {RELEASE_FILE} says {entry['size']:,}")
            elif digest.hexdigest() != entry["sha256"]:
                problems.append(f"{entry['path']}: SHA-256 {digest.hexdigest()} does not match {RELEASE_FILE}")
            else:
                log(f"ok {entry['path']}")
    finally:
        bar.close()
    return problems


def delete(release_uri: str, *, log: Log = _quiet, stale_after_s: float = DEFAULT_STALE_AFTER_S) -> int:
    """Remove a release: RELEASE.json first (it disappears atomically), then its objects.

    Staged objects of other publishes of the name are removed too when stale; fresh ones
    may belong to a publish still running and are left (see `clean`). Returns the number of
    objects removed.
    """
    bucket, key_prefix, _name = split_release(release_uri)
    s3.check_bucket(bucket)
    try:
        record = _get_json(bucket, key_prefix + RELEASE_FILE)
    except ReleaseError:
        record = {}  # a torn record: delete is its remedy (it failed on it; found by a reviewer)
    committed = record is not None
    if record is not None:
        try:
            record = parse_release_record(record, f"{release_uri}/{RELEASE_FILE}")
        except ReleaseError:
            record = None  # unreadable commit record: removed below, the rest treated as leftovers
    foreign, staged = _check_is_release(bucket, key_prefix, release_uri, record)
    if not committed:  # "deleted (0 objects)" while a publish of it was uploading, about to commit (a tester)
        raise ReleaseNotFoundError(f"{release_uri}: no such release" + (
            " (only a publish's staged objects: it is running, or was killed; `dolmino release clean` removes "
            "them once idle)" if staged else " (nor a publish's staged objects)" if foreign else ""))
    removed = 0
    if committed:
        s3.client().delete_object(Bucket=bucket, Key=key_prefix + RELEASE_FILE)
        removed += 1
        if record is not None and data_prefix_of(record):
            removed += _remove_prefix(bucket, key_prefix + data_prefix_of(record))
        elif record is not None:
            keys = [key_prefix + e["path"] for e in record["files"]]
            s3.delete_keys(bucket, keys)
            removed += len(keys)
    removed += _clean_leftovers(bucket, key_prefix, stale_after_s, release_uri, log)
    if foreign:
        log(_foreign_note(release_uri, foreign))
    log(f"deleted {release_uri} ({removed} objects)")
    return removed


def clean(release_uri: str, *, older_than_s: float = DEFAULT_STALE_AFTER_S, log: Log = _quiet) -> int:
    """Remove what publishes of NAME left behind (never the committed release's objects).

    Only groups idle for `older_than_s` are removed; 0 removes every leftover (say so only
    when no publish of the name is running). Returns the number of objects removed.
    """
    bucket, key_prefix, _name = split_release(release_uri)
    s3.check_bucket(bucket)
    record = _get_json(bucket, key_prefix + RELEASE_FILE)
    foreign, _staged = _check_is_release(bucket, key_prefix, release_uri, parse_release_record(
        record, f"{release_uri}/{RELEASE_FILE}") if record is not None else None)
    removed = _clean_leftovers(bucket, key_prefix, older_than_s, release_uri, log)
    if foreign:
        log(_foreign_note(release_uri, foreign))
    log(f"{release_uri}: removed {removed} leftover object(s)")
    return removed


# ---------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="dolmino release", description=__doc__.split("\n\n")[0], formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("publish", help="upload a finished build as an immutable release", formatter_class=fmt)
    p.add_argument("build_dir", help="a finished build: its directory, or the s3:// prefix a build wrote with "
                                     "--out s3://... (parts are then copied server-side)")
    p.add_argument("root", help="s3://bucket/prefix under which NAME/ is created")
    p.add_argument("--name", required=True)
    p.add_argument("--part-size-mb", type=int, default=DEFAULT_PART_SIZE // (1024 * 1024),
                   help="multipart part size (and threshold) in MiB, at least 5")
    p.add_argument("--stale-after-hours", type=float, default=DEFAULT_STALE_AFTER_S / 3600,
                   help="remove staged objects of earlier publishes of NAME idle this long (0: all of them; "
                        "only when no other publish of NAME is running)")
    p.add_argument("--allow-unconditional-store", action="store_true",
                   help="publish to a store that ignores If-None-Match, where two publishes of one name at once "
                        "are not told apart (the later silently replaces the earlier)")
    p = sub.add_parser("list", help="list the complete releases under s3://bucket/prefix", formatter_class=fmt)
    p.add_argument("root")
    p.add_argument("--json", action="store_true", help="print the RELEASE.json records as JSON")
    p = sub.add_parser("pull", help="download and verify a release into a new directory", formatter_class=fmt)
    p.add_argument("release", help="s3://bucket/prefix/NAME")
    p.add_argument("dest", type=s3.local_path, help="a new or empty local directory (not the current one)")
    p = sub.add_parser("verify", help="re-hash a release's objects in place", formatter_class=fmt)
    p.add_argument("release")
    p = sub.add_parser("delete", help="remove a release (its RELEASE.json first)", formatter_class=fmt)
    p.add_argument("release")
    p.add_argument("--yes", action="store_true", help="required: deleting a release cannot be undone")
    p.add_argument("--stale-after-hours", type=float, default=DEFAULT_STALE_AFTER_S / 3600,
                   help="also remove staged objects of other publishes of NAME idle this long (0: all of them; "
                        "only when no publish of NAME is running)")
    p = sub.add_parser("clean", help="remove objects that interrupted or losing publishes left behind",
                       formatter_class=fmt)
    p.add_argument("release")
    p.add_argument("--older-than-hours", type=float, default=DEFAULT_STALE_AFTER_S / 3600,
                   help="only leftovers idle this long (0: all of them; only when no publish of NAME is running)")
    for p in sub.choices.values():
        p.add_argument("--no-progress", action="store_true",
                       help="no progress bar (it is shown only when stderr is a terminal anyway)")
    return parser.parse_args(argv)


_LOOK_BELOW = 20  # sub-prefixes of a root without releases that `list` looks into
_FIRST_KEYS = 100  # keys it reads of each: one listing page


def _releases_one_level_down(root: str) -> tuple[list[str], list[str]] | None:
    """(the names of the sub-prefixes of `root` that hold releases, the names of all its sub-prefixes), for
    `list` given the parent of a releases root, which said only "no releases under ..." (a tester). Bounded,
    never a walk of the bucket: one delimiter listing of `root`, then one page of keys under each of its first
    sub-prefixes, where a releases root shows by its first release's RELEASE.json ('R' sorts before that
    release's data/). None when S3 cannot tell."""
    bucket, prefix = split_root(root)
    try:
        subs = s3.list_prefixes(bucket, prefix)
        found = []
        for sub in subs[:_LOOK_BELOW]:
            page = s3.client().list_objects_v2(Bucket=bucket, Prefix=sub, MaxKeys=_FIRST_KEYS)
            rels = [obj["Key"][len(sub):] for obj in page.get("Contents", ())]
            if any(_NAME_RE.match(name) for name in _nested_releases(rels)):  # NAME/RELEASE.json, not deeper
                found.append(sub[len(prefix):].rstrip("/"))
    except Exception:  # noqa: BLE001 - only a hint depends on it
        return None
    return found, [sub[len(prefix):] for sub in subs]


def _no_releases_note(root: str) -> str:
    """What `list` says where it lists nothing: a release's own URI, the parent of a releases root, or neither."""
    if _is_release(root):  # a release's own URI listed nothing, exit status 0, as an empty root does (a tester)
        return (f"note: {root} is a release, not a releases root: `dolmino release list {root.rsplit('/', 1)[0]}` "
                "lists it beside the others")
    found, subs = _releases_one_level_down(root) or ([], [])
    if found:
        return (f"note: no releases directly under {root}; releases one level down: "
                + ", ".join(f"`dolmino release list {root}/{name}`" for name in found))
    if subs:
        shown = ", ".join(subs[:5]) + (f", ... ({len(subs)} in all)" if len(subs) > 5 else "")
        return (f"note: no releases under {root} (a releases root is the prefix right above NAME/{RELEASE_FILE}; "
                f"below this one: {shown})")
    return f"note: no releases under {root}"


def _count(value, unit: str) -> str:
    return f"{value:,} {unit}" if is_count(value) else f"? {unit}"


def _list_line(rec: dict) -> str:
    """One release as `list` prints it: what a team lead picks a release by, its tokens and documents too
    (the line gave only files and bytes, though RELEASE.json holds the counts; a tester), and who published it
    (releases of format 2 before `published_by`, and format 1: '?')."""
    m, out = rec.get("manifest") or {}, rec.get("output") or {}
    return "\t".join([rec["name"], str(rec.get("created")), f"{len(rec['files'])} files",
                      _count(rec.get("total_bytes", 0), "bytes"), _count(out.get("tokens"), "tokens"),
                      _count(out.get("docs"), "docs"), f"manifest={m.get('name')} seed={m.get('seed')}",
                      f"by={rec.get('published_by', '?')}"])


def _run(args: argparse.Namespace) -> int:
    show = not args.no_progress and sys.stderr.isatty()
    if show:
        from tqdm import tqdm

        def say(msg: str) -> None:
            tqdm.write(msg, file=sys.stdout)  # above the progress bar, not through it
    else:
        say = print
    if args.command == "publish":
        if args.stale_after_hours < 0:
            raise ValueError("--stale-after-hours must be >= 0")
        publish(args.build_dir, args.root, args.name, part_size=args.part_size_mb * 1024 * 1024, log=say,
                progress=show, stale_after_s=args.stale_after_hours * 3600,
                allow_unconditional_store=args.allow_unconditional_store)
    elif args.command == "list":
        complete, incomplete = list_releases(args.root)
        if args.json:
            print(json.dumps(complete, indent=2))
        else:
            for rec in complete:
                print(_list_line(rec))
        if incomplete:
            print(f"note: ignored {len(incomplete)} incomplete upload(s) without a readable {RELEASE_FILE}: "
                  f"{', '.join(incomplete)}", file=sys.stderr)
        if not complete:
            print(_no_releases_note(args.root.rstrip("/")), file=sys.stderr)
    elif args.command == "pull":
        pull(args.release, args.dest, log=say, progress=show)
    elif args.command == "verify":
        if not s3.is_s3(args.release) and os.path.isfile(os.path.join(args.release, RELEASE_FILE)):
            # "not an s3:// URI" left a team re-checking its pulled copy with no way to (a tester)
            raise ReleaseError(f"{args.release}: a pulled release on local disk; `dolmino release verify` re-hashes a "
                               f"release on S3: `dolmino validate {args.release}` checks the parts here against "
                               "the SHA-256 their report.json certifies")
        problems = verify(args.release, log=say, progress=show)
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
        delete(args.release, log=say, stale_after_s=args.stale_after_hours * 3600)
    elif args.command == "clean":
        if args.older_than_hours < 0:
            raise ValueError("--older-than-hours must be >= 0")
        clean(args.release, older_than_s=args.older_than_hours * 3600, log=say)
    return 0


class _Terminated(SystemExit):
    """SIGTERM, raised as an exit (clean-up runs as for any exit) that main() reports."""

    def __init__(self):
        super().__init__(143)


@s3.cli_errors("release", expected=(ReleaseError, ValueError, OSError))
def main(argv: list[str] | None = None) -> int:
    from dolmino.stdout_pipe import sigterm_raises

    args = parse_args(argv)
    try:
        # SIGTERM as an exit, so a pull removes its partial download and a publish stops cleanly
        with sigterm_raises(_Terminated):
            return _run(args)
    except ReleaseIntegrityError as exc:
        print(f"release: error: {s3.redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a 40-line traceback through s3transfer's threads (a tester); cleanup has run
        print("release: interrupted", file=sys.stderr)
        return 130
    except _Terminated:  # exited 143 without a word (a tester)
        print("release: interrupted", file=sys.stderr)
        return 143


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
