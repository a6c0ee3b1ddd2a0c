"""S3 I/O for builds and releases: one process-local client, object streams, globbing.

Any S3-compatible store works: boto3 (>= 1.34) reads the endpoint from
`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` and credentials from its usual chain (env,
config files, instance roles), so nothing here takes an endpoint or a key as an argument.

Why process-local clients: Spark forks Python workers and pickles the functions it ships to
them. A boto3 client holds sockets and locks that survive neither, so clients are never
pickled; every process builds its own on first use (keyed by pid and by the endpoint
settings, which tests change) and reuses it for every object afterwards.

Why the redaction helpers: botocore errors and endpoint URLs can carry an access key id,
a presigned signature or a session token. Anything this project prints about an S3 failure
goes through `redact()` / `describe_error()` first.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import IO, Iterator

S3_SCHEME = "s3://"
# Bucket naming rules of S3 (3-63 chars, lower case, digits, dots, hyphens).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE")
# Things that look like credentials whatever their source: access key ids, SigV4 query
# parameters of presigned URLs, Authorization headers, user:password@ in URLs.
_SECRET_PATTERNS = (
    (re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{12,}\b"), "***"),
    (re.compile(r"(X-Amz-(?:Credential|Signature|Security-Token)=)[^&\s'\"]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"((?:Signature|AWSAccessKeyId|Credential)=)[^,&\s'\"]+"), r"\1***"),
    (re.compile(r"(Authorization:\s*)\S.*", re.IGNORECASE), r"\1***"),
    (re.compile(r"(://)[^/@\s]+:[^/@\s]+@"), r"\1***@"),
)


class S3PathError(FileNotFoundError):
    """An s3:// location that does not exist (bucket or object)."""


# ---------------------------------------------------------------- URIs


def is_s3(uri: str) -> bool:
    return str(uri).startswith(S3_SCHEME)


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key"); the key may be empty."""
    uri = str(uri)
    if not is_s3(uri):
        raise ValueError(f"{uri!r}: not an s3:// URI")
    bucket, _, key = uri[len(S3_SCHEME):].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ValueError(f"{uri!r}: {bucket!r} is not a valid S3 bucket name")
    return bucket, key


def join_uri(bucket: str, key: str) -> str:
    return f"{S3_SCHEME}{bucket}/{key}"


# ---------------------------------------------------------------- clients

_CLIENTS: dict[tuple, object] = {}
_CLIENTS_LOCK = threading.Lock()


def client():
    """The S3 client of this process (created on first use, never shared across a fork)."""
    key = (os.getpid(),) + tuple(os.environ.get(name) for name in _ENDPOINT_ENV + _CREDENTIAL_ENV)
    found = _CLIENTS.get(key)
    if found is not None:
        return found
    with _CLIENTS_LOCK:
        found = _CLIENTS.get(key)
        if found is None:
            import boto3
            from botocore.config import Config

            session = boto3.session.Session()  # sessions are not thread-safe; clients are
            config = Config(retries={"max_attempts": 8, "mode": "adaptive"}, max_pool_connections=32,
                            connect_timeout=20, read_timeout=120)
            found = session.client("s3", config=config)
            # Drop clients of other pids (inherited through fork) and stale settings.
            _CLIENTS.clear()
            _CLIENTS[key] = found
    return found


# ---------------------------------------------------------------- redaction


def _known_secrets() -> list[str]:
    secrets = [os.environ.get(name) for name in _CREDENTIAL_ENV]
    try:  # credentials from config files / instance roles that are already loaded
        for cached in list(_CLIENTS.values()):
            creds = cached._request_signer._credentials  # noqa: SLF001 - read only, to redact
            if creds is not None:
                frozen = creds.get_frozen_credentials()
                secrets += [frozen.access_key, frozen.secret_key, frozen.token]
    except Exception:  # noqa: BLE001 - redaction must never fail
        pass
    return sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every credential we know of, or that looks like one, replaced by ***."""
    text = str(text)
    for secret in _known_secrets():
        text = text.replace(secret, "***")
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def describe_error(exc: BaseException) -> str:
    """A one-line, credential-free description of an S3 / network / IO failure."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        op = getattr(exc, "operation_name", "request")
        text = f"S3 {op} failed: {err.get('Code', '?')} ({status}): {err.get('Message', '')}".rstrip(": ")
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact(text)


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _is_missing(exc: BaseException) -> bool:
    return _error_code(exc) in ("404", "NoSuchKey", "NoSuchBucket", "NotFound")


# ---------------------------------------------------------------- objects


def check_bucket(bucket: str) -> None:
    """Raise S3PathError if the bucket does not exist (clearer than an empty listing)."""
    from botocore.exceptions import ClientError

    try:
        client().head_bucket(Bucket=bucket)
    except ClientError as exc:
        if _is_missing(exc):
            raise S3PathError(f"s3://{bucket}: bucket does not exist") from None
        raise


def object_size(uri: str) -> int | None:
    """Size in bytes of an object, or None if it does not exist."""
    from botocore.exceptions import ClientError

    bucket, key = split_uri(uri)
    try:
        return int(client().head_object(Bucket=bucket, Key=key)["ContentLength"])
    except ClientError as exc:
        if _is_missing(exc):
            return None
        raise


def open_uri(uri: str, mode: str = "rb", compression: str = "disable") -> IO:
    """Open an s3:// object as a stream (smart_open: ranged reads that resume, multipart writes).

    Reading a missing object raises FileNotFoundError (S3PathError) rather than smart_open's
    generic OSError, so callers can tell "no such file" from "broken stream".
    """
    import smart_open

    bucket, key = split_uri(uri)
    if not key or key.endswith("/"):
        raise ValueError(f"{uri!r}: names a prefix, not an object")
    params = {"client": client()}
    try:
        return smart_open.open(uri, mode, compression=compression, transport_params=params)
    except (OSError, ValueError) as exc:
        if "r" in mode and object_size(uri) is None:
            check_bucket(bucket)
            raise S3PathError(f"{uri}: no such object") from None
        if "w" in mode:
            check_bucket(bucket)
        raise OSError(f"{uri}: cannot open for {mode!r}: {redact(str(exc))}") from None


def iter_keys(bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
    """(key, size) of every object under `prefix`, in S3's (lexicographic) order."""
    from botocore.exceptions import ClientError

    paginator = client().get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", ()):
                yield obj["Key"], int(obj["Size"])
    except ClientError as exc:
        if _error_code(exc) == "NoSuchBucket":
            raise S3PathError(f"s3://{bucket}: bucket does not exist") from None
        raise


def download_prefix(uri: str, dest: str | os.PathLike) -> list[str]:
    """Copy every object under the s3:// "directory" `uri` into `dest`, keeping relative paths.

    For model directories (config, tokenizer, weights) that a process loads from local disk.
    Size and ETag of each object are recorded in `dest/.s3-objects.json`, written last: a
    later call that lists the same objects fetches nothing (one LIST request), a changed or
    added object is fetched again, a removed one is deleted, and an interrupted download is
    redone rather than half-used (each file is written to a temporary name, then renamed).
    Processes that share `dest` must hold a lock around the call. Returns the relative paths.
    """
    from botocore.exceptions import ClientError

    bucket, key = split_uri(uri)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    dest = Path(dest)
    listing: dict[str, dict] = {}
    try:
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", ()):
                rel = obj["Key"][len(prefix):]
                if not rel or rel.endswith("/"):
                    continue  # directory markers
                if any(part in ("", ".", "..") for part in rel.split("/")):
                    raise ValueError(f"{join_uri(bucket, obj['Key'])}: key does not map to a safe local path")
                listing[rel] = {"size": int(obj["Size"]), "etag": str(obj.get("ETag", "")).strip('"')}
    except ClientError as exc:
        if _error_code(exc) == "NoSuchBucket":
            raise S3PathError(f"s3://{bucket}: bucket does not exist") from None
        raise OSError(f"{uri}: cannot list: {describe_error(exc)}") from None
    if not listing:
        check_bucket(bucket)
        raise S3PathError(f"{uri}: no objects under this prefix")
    record_path = dest / ".s3-objects.json"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    previous = record.get("objects", {}) if record.get("uri") == uri else {}
    dest.mkdir(parents=True, exist_ok=True)
    for rel, info in sorted(listing.items()):
        target = dest.joinpath(*rel.split("/"))
        if previous.get(rel) == info and target.is_file() and target.stat().st_size == info["size"]:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        try:
            client().download_file(bucket, prefix + rel, str(tmp))
        except ClientError as exc:
            tmp.unlink(missing_ok=True)
            raise OSError(f"{join_uri(bucket, prefix + rel)}: download failed: {describe_error(exc)}") from None
        got = tmp.stat().st_size
        if got != info["size"]:
            tmp.unlink(missing_ok=True)
            raise OSError(f"{join_uri(bucket, prefix + rel)}: downloaded {got} bytes, listed {info['size']}")
        os.replace(tmp, target)
    for rel in previous:
        if rel not in listing:
            dest.joinpath(*rel.split("/")).unlink(missing_ok=True)
    tmp_record = record_path.with_name(f"{record_path.name}.tmp{os.getpid()}")
    tmp_record.write_text(json.dumps({"uri": uri, "objects": listing}, sort_keys=True), encoding="utf-8")
    os.replace(tmp_record, record_path)
    return sorted(listing)


def list_prefixes(bucket: str, prefix: str) -> list[str]:
    """The immediate "sub-directories" of `prefix` (which should end with '/')."""
    paginator = client().get_paginator("list_objects_v2")
    found = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        found += [p["Prefix"] for p in page.get("CommonPrefixes", ())]
    return found


# ---------------------------------------------------------------- globbing


def _glob_regex(pattern: str) -> re.Pattern:
    """Translate a key glob to a regex, with the path semantics of glob.glob(recursive=True).

    `*`, `?` and `[...]` stay within one path segment; `**` as a whole segment matches any
    number of segments (zero included); like the shell, wildcards do not match a leading '.'.
    """
    out = []
    segments = pattern.split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "**":
            out.append(r"(?:[^/.][^/]*/)*" if not last else r"(?:[^/.][^/]*(?:/[^/.][^/]*)*)?")
            continue
        part = []
        j = 0
        while j < len(seg):
            ch = seg[j]
            if ch == "*":
                part.append("[^/]*")
            elif ch == "?":
                part.append("[^/]")
            elif ch == "[":
                start = j + 1
                if seg[start:start + 1] == "!":  # '!' negates; '^' is literal, as in fnmatch
                    start += 1
                if seg[start:start + 1] == "]":  # a leading ']' is a literal member
                    start += 1
                end = seg.find("]", start)
                if end == -1:
                    part.append(re.escape(ch))
                else:
                    body = seg[j + 1:end]
                    negate = body[:1] == "!"
                    body = "".join("\\" + c if c in "\\[]&~|^" else c for c in body[negate:])
                    part.append("[" + ("^" if negate else "") + body + "]")
                    j = end
            else:
                part.append(re.escape(ch))
            j += 1
        regex = "".join(part)
        if seg[:1] in ("*", "?", "["):
            regex = "(?!\\.)" + regex
        out.append(regex + ("" if last else "/"))
    return re.compile("".join(out) + r"\Z")


def _literal_prefix(key_pattern: str) -> str:
    cut = min((i for i, ch in enumerate(key_pattern) if ch in "*?["), default=len(key_pattern))
    return key_pattern[:cut]


def expand_uri_glob(pattern: str) -> list[str]:
    """Sorted s3:// URIs of the objects matching a glob (`*`, `?`, `[..]`, `**`).

    Without wildcards, an existing object matches itself and a "directory" prefix matches
    every object under it (hidden names and directory markers excepted), as the local
    branch of build_mix.expand_paths does. A missing bucket raises S3PathError; a pattern
    that matches nothing returns [].
    """
    bucket, key_pattern = split_uri(pattern)
    if not any(ch in key_pattern for ch in "*?["):
        if key_pattern and not key_pattern.endswith("/") and object_size(pattern) is not None:
            return [pattern]
        prefix = key_pattern.rstrip("/") + "/" if key_pattern.strip("/") else ""
        keys = [k for k, _ in iter_keys(bucket, prefix)
                if not k.endswith("/") and not k.rsplit("/", 1)[-1].startswith(".")]
        if not keys and not key_pattern:
            check_bucket(bucket)
        return sorted(join_uri(bucket, k) for k in keys)
    regex = _glob_regex(key_pattern)
    prefix = _literal_prefix(key_pattern)
    matched = [k for k, _ in iter_keys(bucket, prefix) if not k.endswith("/") and regex.match(k)]
    return sorted(join_uri(bucket, k) for k in matched)
