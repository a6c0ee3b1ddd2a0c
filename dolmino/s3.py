"""S3 I/O for builds and releases: one process-local client, object streams, globbing.

Any S3-compatible store works: boto3 (>= 1.34) reads the endpoint from
`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` and credentials from its usual chain (env,
config files, instance roles), so nothing here takes an endpoint or a key as an argument.

Why process-local clients: Spark forks Python workers and pickles the functions it ships to
them. A boto3 client holds sockets and locks that survive neither, so clients are never
pickled; every process builds its own on first use (keyed by pid and by the endpoint
settings, which tests change) and reuses it for every object afterwards.

Why the redaction helpers: botocore errors and endpoint URLs can carry an access key id,
a presigned signature, a session token or a `user:password@` in the endpoint URL. Anything
this project prints about an S3 failure goes through `redact()` / `describe_error()` /
`s3_failure_message()` first, and commands wrap their main() in `cli_errors(prog)` so that
nothing escapes as a raw traceback.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import socket
import sys
import threading
from pathlib import Path
from typing import IO, Iterator, NamedTuple

S3_SCHEME = "s3://"
# Bucket naming rules of S3 (3-63 chars, lower case, digits, dots, hyphens).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_CHECKSUM_OPTIONS = ("request_checksum_calculation", "response_checksum_validation")
_ENDPOINT_URL_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # boto3's order of precedence for S3
_ENDPOINT_ENV = (*_ENDPOINT_URL_ENV, "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
                 "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", *(f"AWS_{o.upper()}" for o in _CHECKSUM_OPTIONS))
# Hosts of AWS's own S3 endpoints (standard, China, dual-stack/new-style).
_AWS_HOST = re.compile(r"(^|\.)(amazonaws\.com|amazonaws\.com\.cn|api\.aws)$")
DEFAULT_MAX_ATTEMPTS = 8
# Things that look like credentials whatever their source: access key ids, SigV4 query
# parameters of presigned URLs, Authorization headers, user:password@ in URLs.
_SECRET_PATTERNS = (
    (re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{12,}\b"), "***"),
    (re.compile(r"(X-Amz-(?:Credential|Signature|Security-Token)=)[^&\s'\"]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"((?:Signature|AWSAccessKeyId|Credential)=)[^,&\s'\"]+"), r"\1***"),
    (re.compile(r"(Authorization:\s*)\S.*", re.IGNORECASE), r"\1***"),
    # userinfo of any URL (http://user:pass@host, http://token@host), quoted or not
    (re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s'\"<>]+@"), r"\1***@"),
)


class S3PathError(FileNotFoundError):
    """An s3:// location that does not exist (bucket or object)."""


class S3URIError(ValueError):
    """An s3:// URI that cannot name an object (a bucket name S3 does not allow): a user's
    typo, reported as one line by every command (`cli_errors`)."""


class NoSuchBucket(S3PathError):
    """The bucket itself is missing: a wrong name or endpoint, never "not written yet"."""

    def __init__(self, bucket: str):
        super().__init__(f"s3://{bucket}: bucket does not exist")


class S3DeleteError(OSError):
    """DeleteObjects answered 200 yet named keys it did not delete (S3 reports failures per key)."""


class S3ObjectError(OSError):
    """A request about one object failed for good (access denied, retries spent, a transfer
    cut short): the message names the object, then the failure, on one line (`about`)."""


class S3EndpointError(ValueError):
    """The endpoint variable holds no URL botocore can use (no scheme, or one it refuses): named,
    without its userinfo."""


# Errors whose message names their object (or URI) already: shown as they are.
_NAMED_ERRORS = (S3PathError, S3DeleteError, S3URIError, S3ObjectError, S3EndpointError)


# ---------------------------------------------------------------- URIs


def local_path(value: str) -> str:
    """argparse `type` of an option that reads or writes this machine's filesystem only.

    pathlib reads `s3://b/k` as the relative directory `s3:/b/k`, so without this check such
    a command would put its output on the local disk under that name, silently."""
    if "://" in value:
        import argparse

        # Not echoed as given: a URL's user:password@ (`https://user:hf_...@huggingface.co/...` to --init-from)
        # went to the terminal and the job's log (found by a tester).
        raise argparse.ArgumentTypeError(f"{redact(value)!r} is a URL; this needs a local path (copy to or from S3 "
                                         "with `aws s3 cp`)")
    return value


def is_s3(uri: str) -> bool:
    return str(uri).startswith(S3_SCHEME)


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key"); the key may be empty."""
    uri = str(uri)
    if not is_s3(uri):
        raise ValueError(f"{uri!r}: not an s3:// URI")
    bucket, _, key = uri[len(S3_SCHEME):].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        if "@" in bucket:  # `s3://user:password@bucket/...`: the "bucket name" quoted was the password (a tester)
            raise S3URIError(f"{redact(uri)!r}: an s3:// URI holds no user:password@; S3 credentials come from "
                             "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
        raise S3URIError(f"{uri!r}: {bucket!r} is not a valid S3 bucket name (3-63 characters: lower-case letters, "
                         "digits, '.' and '-')")
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
            # AWS_MAX_ATTEMPTS / AWS_RETRY_MODE override the defaults, as they do for the AWS CLI:
            # attempts in all (botocore's `max_attempts` counts retries: AWS_MAX_ATTEMPTS=1 made two
            # requests; a tester). Standard mode: adaptive's client-side rate limiter, kept by each
            # of a build's many worker processes apart, took 400 small GETs on 16 threads from 2 s
            # to 30-38 s at 5% SlowDown where standard took 3 s (measured by a tester).
            retries = {"total_max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS") or DEFAULT_MAX_ATTEMPTS),
                       "mode": os.environ.get("AWS_RETRY_MODE") or "standard"}
            config = Config(retries=retries, max_pool_connections=32, connect_timeout=20, read_timeout=120)
            # botocore signs with SigV4 and ignores a URL's user:password@ (it sends neither);
            # left in, the password would be in every error message that names a URL, on
            # executors too, where Spark logs tracebacks as they are.
            name = next((n for n in _ENDPOINT_URL_ENV if os.environ.get(n)), None)
            endpoint = os.environ[name] if name else None
            if endpoint and "://" not in endpoint:
                # botocore's ValueError was a traceback, "unexpected ValueError", naming the user (a tester)
                raise S3EndpointError(f"{name} is not an endpoint URL: {endpoint.rpartition('@')[2]!r} (user info "
                                      "not shown) has no scheme; write http://HOST:PORT or https://HOST")
            bare = {"endpoint_url": without_userinfo(endpoint)} if endpoint and "@" in endpoint else {}
            try:
                found = session.client("s3", config=config, **bare)
            except ValueError as exc:  # botocore's "Invalid endpoint" (a host with "_", say): a traceback before
                raise S3EndpointError(f"{name} is not an endpoint URL botocore accepts ({exc})") from None
            checksums = _compatible_checksums(session, found.meta.endpoint_url)
            if checksums:
                found = session.client("s3", config=config.merge(Config(**checksums)), **bare)
            # Drop clients of other pids (inherited through fork) and stale settings.
            _CLIENTS.clear()
            _CLIENTS[key] = found
    return found


def split_userinfo(url: str) -> tuple[str, str]:
    """(the userinfo of `url`'s authority, `url` without it and its "@"); ("", url) when none.
    The one reading of an endpoint URL's authority, for the client and for redaction alike."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", url
    authority, slash, path = rest.partition("/")
    userinfo, _, host = authority.rpartition("@")
    return userinfo, f"{scheme}://{host}{slash}{path}"


def without_userinfo(url: str) -> str:
    """`url` without the user:password@ of its authority (what botocore would ignore anyway)."""
    return split_userinfo(url)[1]


def _compatible_checksums(session, endpoint_url: str) -> dict:
    """Checksum settings for an S3-compatible store that is not AWS: `when_required`.

    boto3 >= 1.36 adds a CRC checksum (x-amz-checksum-*, x-amz-sdk-checksum-algorithm,
    aws-chunked bodies) to every upload by default. AWS checks it; many S3-compatible stores
    (older MinIO, Backblaze B2, Qumulo, OVH, ...) reject such a request (InvalidArgument,
    XAmzContentSHA256Mismatch), so a build whose every read worked fails at its first write.
    `when_required` sends a checksum only where the operation demands one, as before 1.36.
    Integrity does not rest on it: SigV4 signs each upload's payload hash, and parts carry
    the SHA-256 that the driver and `release` check. A setting the user made (environment or
    profile) is left alone, and so is AWS itself."""
    from urllib.parse import urlparse

    if _AWS_HOST.search(urlparse(endpoint_url or "").hostname or ""):
        return {}
    try:
        scoped = session._session.get_scoped_config()  # noqa: SLF001 - the profile's settings
    except Exception:  # noqa: BLE001 - no readable profile: nothing set there
        scoped = {}
    return {o: "when_required" for o in _CHECKSUM_OPTIONS if not os.environ.get(f"AWS_{o.upper()}") and o not in scoped}


# ---------------------------------------------------------------- redaction


def _endpoint_passwords() -> list[str]:
    """Passwords in the userinfo of the endpoint URLs (raw and percent-decoded), read generously:
    also without a scheme (`user:pass@host`) and with an unencoded "/" in the password, which
    `split_userinfo` (a URL's reading) does not see, and which botocore then printed back whole in
    "Invalid endpoint" / "not a valid URI" (found by a tester). A host holds no "@"."""
    from urllib.parse import unquote

    found = []
    for name in _ENDPOINT_URL_ENV:
        value = os.environ.get(name) or ""
        # The URL's own reading and two loose ones (up to the first "@", up to the last): a password
        # is redacted wherever any finds it (an unencoded "@" or "/" in it, a "@" in the endpoint's
        # path); a loose one may also hide part of an endpoint's path, which is harmless.
        rest = value.partition("://")[2] if "://" in value else value
        # Without an "@" there is no userinfo: host:port read as user:password redacted every port
        # number everywhere ("127.0.0.1:***", "part-0***.npy"; found by a reviewer).
        first = rest.partition("@")[0] if "@" in rest else ""
        for userinfo in (split_userinfo(value)[0], first, rest.rpartition("@")[0]):
            if ":" in userinfo:
                password = userinfo.split(":", 1)[1]
                found += [password, unquote(password)]
    return found


def _known_secrets() -> list[str]:
    secrets = [os.environ.get(name) for name in _CREDENTIAL_ENV] + _endpoint_passwords()
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


# What smart_open's reader raises once its own re-reads of a body cut off mid-read are spent (5, 31 s of sleeps): a
# bare OSError naming the object as the reader's repr, `smart_open.s3._SeekableReader('bucket', 'key')`, not why.
_SMART_OPEN_GAVE_UP = re.compile(r"smart_open\.s3\.\w+(\(.*\)): failed to read -?\d+ bytes after (\d+) attempts")


def _smart_open_gave_up(exc: BaseException) -> str | None:
    """The line for smart_open's "failed to read N bytes after M attempts", or None for any other error."""
    import ast

    found = _SMART_OPEN_GAVE_UP.fullmatch(str(exc)) if type(exc) is OSError else None
    if found is None:
        return None
    what = f"the S3 response was cut off mid-body on each of {found.group(2)} reads"
    try:
        bucket, key = ast.literal_eval(found.group(1))
        return f"{join_uri(bucket, key)}: {what}"
    except (ValueError, SyntaxError, TypeError):  # another form of reader: its own words name the object
        return f"{what} ({exc})"


_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                     "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed"}


def _one_s3_failure(exc: BaseException) -> str | None:
    """The message for one exception of the chain, or None if it is not an S3/network failure."""
    if isinstance(exc, _NAMED_ERRORS):
        return str(exc)
    if (cut_off := _smart_open_gave_up(exc)) is not None:
        return cut_off
    if "botocore" in sys.modules:  # not imported: the exception cannot be one of its classes
        from botocore import exceptions as bex

        if isinstance(exc, bex.ClientError):
            code = error_code(exc)
            op = getattr(exc, "operation_name", "request")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            if code == "NoSuchBucket" or (code in ("404", "NotFound") and op == "HeadBucket"):
                return f"S3 {op} failed: {code} ({status}): the bucket does not exist"
            if code in ("AccessDenied", "AllAccessDisabled", "403", "Forbidden"):
                return (f"S3 {op} failed: {code} ({status}): access denied; check the credentials, "
                        "the bucket name and the bucket policy")
            if code in _CREDENTIAL_CODES:
                return (f"S3 {op} failed: {code} ({status}): the credentials were rejected; check "
                        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or AWS_PROFILE")
            return describe_error(exc)
        if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError, bex.CredentialRetrievalError)):
            if _in_spark_task():  # the driver had them: the executors' environment is the one to fix
                return (f"no usable S3 credentials in this executor ({type(exc).__name__}): set AWS credentials in "
                        "the executors' environment (spark.executorEnv.AWS_ACCESS_KEY_ID and "
                        "spark.executorEnv.AWS_SECRET_ACCESS_KEY, or the Spark workers' own environment, "
                        "AWS_PROFILE or an instance role)")
            return (f"no usable S3 credentials ({type(exc).__name__}): set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        if isinstance(exc, (bex.ResponseStreamingError, bex.IncompleteReadError)):  # it was reached (a tester)
            return f"the S3 response was cut off mid-body ({type(exc).__name__}): {exc}"
        if isinstance(exc, (bex.ConnectionError, bex.HTTPClientError)):
            return f"cannot reach the S3 endpoint ({type(exc).__name__}): {exc}"
        if isinstance(exc, bex.BotoCoreError):
            return f"S3 client error ({type(exc).__name__}): {exc}"
    if "boto3" in sys.modules:
        from boto3.exceptions import Boto3Error

        if isinstance(exc, Boto3Error):
            return f"S3 transfer failed ({type(exc).__name__}): {exc}"
    if "urllib3" in sys.modules:
        from urllib3.exceptions import HTTPError as Urllib3Error

        if isinstance(exc, Urllib3Error):
            return f"cannot reach the S3 endpoint ({type(exc).__name__}): {exc}"
    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
        return f"network failure ({type(exc).__name__}): {exc}"
    return None


def _in_spark_task() -> bool:
    """Running a Spark task (an executor's Python worker), not a driver or a command."""
    if "pyspark" not in sys.modules:
        return False
    try:
        from pyspark import TaskContext

        return TaskContext.get() is not None
    except Exception:  # noqa: BLE001 - only a hint depends on it
        return False


def s3_failure_message(exc: BaseException) -> str | None:
    """One redacted line describing an S3 / botocore / network failure, or None for anything else.

    Covers a missing bucket or object, rejected or missing credentials, access denied, an
    unreachable endpoint, timeouts, and transfer-manager failures; the exception's cause
    chain is searched too (a wrapper raised `from` an S3 error is that S3 error).
    """
    seen: set[int] = set()
    item: BaseException | None = exc
    while item is not None and id(item) not in seen and len(seen) < 8:
        seen.add(id(item))
        message = _one_s3_failure(item)
        if message is not None:
            return redact(" ".join(message.split()))
        item = item.__cause__ or (None if item.__suppress_context__ else item.__context__)
    return None


_PLACE_ERRNOS = frozenset((errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT))


def place_remedy(code: int, user: str = "this user") -> str:
    """What to do about a place an OSError of errno `code` (one of _PLACE_ERRNOS) found full, read-only
    or forbidden (to `user`: an executor's is not the driver's): "build_mix: error: .../report.html: No
    space left on device" said nothing of it (a tester)."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free space there"
    return "make it writable" if code == errno.EROFS else f"give {user} access to it"


class cli_errors:  # noqa: N801 - used like a function: @cli_errors("prog") / with cli_errors("prog")
    """Turn what escapes a command's main() into a one-line, credential-free error.

        @cli_errors("dolmino release")
        def main(argv=None) -> int: ...

    - an S3 / network failure (see s3_failure_message): `prog: error: <line>`, exit status 2;
    - an exception of a class in `expected`: `prog: error: <its message>`, exit status 2;
    - a read-only, forbidden or full place (an OSError naming its file): `prog: error: <file>:
      <reason>; <what to do>` (then `rerun`, where the command resumes: "then rerun the same
      command ..."), exit status 2;
    - anything else is a bug: its traceback is printed with every credential redacted, then
      `prog: error: unexpected <Type>: <message>`, exit status 1.
    As a decorator the wrapped function returns the status; as a context manager it raises
    SystemExit with it. KeyboardInterrupt and SystemExit pass through untouched.
    """

    def __init__(self, prog: str, *, expected: tuple[type[BaseException], ...] = (), rerun: str = ""):
        self.prog = prog
        self.expected = expected
        self.rerun = rerun

    def report(self, exc: BaseException) -> int:
        message = s3_failure_message(exc)
        if message is not None:
            print(f"{self.prog}: error: {message}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError) and exc.errno in _PLACE_ERRNOS and exc.filename:
            # The place, not a bug: a read-only mount, no permission, a full disk. Before `expected`, which
            # lists OSError for release and synth: "release: error: [Errno 28] No space left on device: '/x'"
            # said nothing of what to do (a tester).
            then = f", {self.rerun}" if self.rerun else ""
            print(f"{self.prog}: error: {redact(str(exc.filename))}: {exc.strerror}; {place_remedy(exc.errno)}{then}",
                  file=sys.stderr)
            return 2
        if self.expected and isinstance(exc, self.expected):
            print(f"{self.prog}: error: {redact(' '.join(str(exc).split()))}", file=sys.stderr)
            return 2
        import traceback

        sys.stderr.write(redact("".join(traceback.format_exception(exc))))
        print(f"{self.prog}: error: unexpected {type(exc).__name__}: {redact(' '.join(str(exc).split()))}",
              file=sys.stderr)
        return 1

    def __call__(self, func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the point: nothing escapes unredacted
                return self.report(exc)
        return wrapper

    def __enter__(self) -> cli_errors:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        raise SystemExit(self.report(exc))


@contextlib.contextmanager
def about(uri: str) -> Iterator[None]:
    """Name `uri` in an S3 or network failure raised inside (an S3ObjectError from the failure's
    one line): botocore's and boto3's messages name the operation, never the object, and a
    build or a pull of thousands of objects has to say which one failed. Anything else, and
    errors that name their object already, pass through unchanged."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is an S3 / network failure
        named = named_failure(uri, exc)
        if named is exc:
            raise
        raise named from None


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _is_missing(exc: BaseException) -> bool:
    return error_code(exc) in ("404", "NoSuchKey", "NoSuchBucket", "NotFound")


def is_missing_object(exc: BaseException) -> bool:
    """A ClientError that says the object is not there, the bucket being (NoSuchBucket is a
    wrong name or endpoint, never "not written yet")."""
    return _is_missing(exc) and error_code(exc) != "NoSuchBucket"


def _raise_no_such_bucket(exc: BaseException, bucket: str) -> None:
    """Raise NoSuchBucket for a ClientError that says the bucket is missing; else return."""
    if error_code(exc) == "NoSuchBucket":
        raise NoSuchBucket(bucket) from None


# ---------------------------------------------------------------- objects


def check_bucket(bucket: str) -> None:
    """Raise S3PathError if the bucket does not exist (clearer than an empty listing)."""
    from botocore.exceptions import ClientError

    try:
        client().head_bucket(Bucket=bucket)
    except ClientError as exc:
        if _is_missing(exc):
            raise NoSuchBucket(bucket) from None
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


def get_bytes(uri: str) -> bytes:
    """A whole object's bytes; S3PathError when the object or its bucket does not exist.

    botocore's NoSuchKey is a ClientError, not an OSError: a caller's `except OSError` for "not
    written yet" would let it through on S3 while catching FileNotFoundError on disk.
    """
    from botocore.exceptions import ClientError

    bucket, key = split_uri(uri)
    with about(uri):  # a throttled or failed GET names its object (it said "GetObject failed", a tester)
        try:
            return get_body(bucket, key)
        except ClientError as exc:
            _raise_no_such_bucket(exc, bucket)
            if is_missing_object(exc):
                raise S3PathError(f"{uri}: no such object") from None
            raise


# GETs of an object whose body is cut off mid-read, in all (each a new request). botocore
# retries a request, never the reading of its body: one connection cut mid-body
# (IncompleteRead) failed a whole build, a release publish or verify (found by a tester).
BODY_READS = 3


def cut_off_errors() -> tuple[type[BaseException], ...]:
    """The errors of a response body that stopped mid-read."""
    from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError
    from urllib3.exceptions import ProtocolError

    return ResponseStreamingError, IncompleteReadError, ReadTimeoutError, ProtocolError


def get_body(bucket: str, key: str, **get_args) -> bytes:
    """A whole object's body, read again (a new GET) where it is cut off mid-read."""
    chunks: list[bytes] = []
    stream_body(bucket, key, chunks.append, chunks.clear, None, **get_args)
    return b"".join(chunks)


def stream_body(bucket: str, key: str, take, restart, chunk_size: int | None, **get_args) -> None:
    """`take` each chunk of an object's body (`chunk_size` bytes; None: the whole body at once);
    where the body is cut off mid-read, `restart()` and read it again from a new GET, up to
    BODY_READS GETs in all. ClientErrors (missing, denied, throttled) are the caller's."""
    for attempt in range(BODY_READS):
        body = client().get_object(Bucket=bucket, Key=key, **get_args)["Body"]
        try:
            if chunk_size is None:
                take(body.read())
            else:
                for chunk in body.iter_chunks(chunk_size):
                    take(chunk)
            return
        except cut_off_errors():
            if attempt + 1 == BODY_READS:
                raise
            restart()


def named_failure(uri: str, exc: BaseException) -> BaseException:
    """`exc` as `about(uri)` would raise it: an S3ObjectError naming the object where it is an S3
    or network failure, else `exc` itself."""
    if isinstance(exc, _NAMED_ERRORS):
        return exc
    message = s3_failure_message(exc)
    if message is None:
        return exc
    return S3ObjectError(redact(message if message.startswith(f"{uri}: ") else f"{uri}: {message}"))


_NOT_IMPLEMENTED = ("NotImplemented", "MethodNotAllowed", "501", "405")


def not_implemented(exc: BaseException) -> bool:
    """The store does not implement the operation (NotImplemented 501, MethodNotAllowed 405):
    an S3-compatible store that lacks an optional feature, not a failure of the request."""
    return error_code(exc) in _NOT_IMPLEMENTED


def multipart_uploads(bucket: str, prefix: str) -> list[dict]:
    """Unfinished multipart uploads under `prefix`: only clean-up looks for them, so a store
    that does not list them (NotImplemented: s3rver, some gateways) has none to show; its
    unfinished uploads are left to the bucket's lifecycle rules."""
    from botocore.exceptions import ClientError

    found = []
    try:
        for page in client().get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
            found += page.get("Uploads", ())
    except ClientError as exc:
        if not not_implemented(exc):
            raise
        return []
    return found


def abort_upload(bucket: str, upload: dict) -> None:
    """Abort one upload `multipart_uploads` listed."""
    client().abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def _delete_each(cl, bucket: str, keys: list[str]) -> None:
    from botocore.exceptions import ClientError

    for key in keys:
        try:
            cl.delete_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if not is_missing_object(exc):  # gone already is what we wanted
                raise


def delete_keys(bucket: str, keys: list[str]) -> None:
    """Delete objects in batches of 1,000; S3DeleteError names any key S3 did not delete.

    DeleteObjects answers 200 when some keys failed (AccessDenied on one prefix, say) and lists
    them in `Errors`; unchecked, a completion marker that should be gone would stay. A store
    without DeleteObjects (GCS's XML API answers NotImplemented) gets one DELETE per key.
    """
    from botocore.exceptions import ClientError

    cl = client()
    one_by_one = False
    for i in range(0, len(keys), 1000):
        batch = keys[i:i + 1000]
        if not one_by_one:
            try:
                request = {"Objects": [{"Key": k} for k in batch], "Quiet": True}
                result = cl.delete_objects(Bucket=bucket, Delete=request)
            except ClientError as exc:
                if not not_implemented(exc):
                    raise
                one_by_one = True  # a store without multi-object delete: GCS's XML API, Riak CS
        if one_by_one:
            _delete_each(cl, bucket, batch)
            continue
        errors = result.get("Errors") or []
        if errors:
            first = errors[0]
            raise S3DeleteError(f"could not delete {len(errors)} object(s), e.g. s3://{bucket}/{first.get('Key')}: "
                                f"{first.get('Code')} {first.get('Message', '')}".rstrip())


def open_uri(uri: str, mode: str = "rb", compression: str = "disable") -> IO:
    """Open an s3:// object as a stream (smart_open: ranged reads that resume, multipart writes).

    Reading a missing object raises FileNotFoundError (S3PathError) rather than smart_open's
    generic OSError, so callers can tell "no such file" from "broken stream".
    """
    import smart_open

    bucket, key = split_uri(uri)
    if not key or key.endswith("/"):
        raise ValueError(f"{uri!r}: names a prefix, not an object")
    with about(uri):  # credentials are resolved here: partial ones (PartialCredentialsError) name the object
        params = {"client": client()}
    try:
        return smart_open.open(uri, mode, compression=compression, transport_params=params)
    except (OSError, ValueError) as exc:
        with about(uri):  # a denied GET is a denied HEAD too: name the object either way
            missing = "r" in mode and object_size(uri) is None
        if missing:
            check_bucket(bucket)
            raise S3PathError(f"{uri}: no such object") from None
        if "w" in mode:
            check_bucket(bucket)
        raise S3ObjectError(f"{uri}: cannot open for {mode!r}: {s3_failure_message(exc) or redact(str(exc))}") from None
    except Exception as exc:  # noqa: BLE001 - re-raised unless an S3 failure, which is named
        # botocore's own errors are no OSError: a missing executor credential said "NoCredentialsError: Unable
        # to locate credentials", naming no object, where a 403 named it (found by a tester)
        named = named_failure(uri, exc)
        if named is exc:
            raise
        raise named from None


def iter_keys(bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
    """(key, size) of every object under `prefix`, in S3's (lexicographic) order."""
    from botocore.exceptions import ClientError

    paginator = client().get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", ()):
                yield obj["Key"], int(obj["Size"])
    except ClientError as exc:
        _raise_no_such_bucket(exc, bucket)
        raise


def iter_objects(bucket: str, prefix: str) -> Iterator[dict]:
    """list_objects_v2 entries (Key, Size, LastModified, ...) under `prefix`, in S3's order."""
    from botocore.exceptions import ClientError

    paginator = client().get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            yield from page.get("Contents", ())
    except ClientError as exc:
        _raise_no_such_bucket(exc, bucket)
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
        _raise_no_such_bucket(exc, bucket)
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


class S3Object(NamedTuple):
    uri: str
    size: int
    etag: str


def list_objects(pattern: str) -> list[S3Object]:
    """`expand_uri_glob` with each object's size and ETag (a build re-tags a changed object)."""
    bucket, key_pattern = split_uri(pattern)
    if not any(ch in key_pattern for ch in "*?["):
        if key_pattern and not key_pattern.endswith("/"):
            from botocore.exceptions import ClientError

            try:
                head = client().head_object(Bucket=bucket, Key=key_pattern)
                return [S3Object(pattern, int(head["ContentLength"]), head.get("ETag", "").strip('"'))]
            except ClientError as exc:
                if not _is_missing(exc):
                    raise
        prefix = key_pattern.rstrip("/") + "/" if key_pattern.strip("/") else ""
        # As a local directory expands (glob's "**/*"): no hidden file, nor anything under a hidden
        # directory below the prefix (web/.hidden/h.jsonl was read from S3, skipped on disk).
        matched = [(k, size, etag) for k, size, etag in _iter_key_info(bucket, prefix)
                   if not k.endswith("/") and not any(part.startswith(".") for part in k[len(prefix):].split("/"))]
        if not matched and not key_pattern:
            check_bucket(bucket)
    else:
        regex = _glob_regex(key_pattern)
        matched = [(k, size, etag) for k, size, etag in _iter_key_info(bucket, _literal_prefix(key_pattern))
                   if not k.endswith("/") and regex.match(k)]
    return sorted(S3Object(join_uri(bucket, k), size, etag) for k, size, etag in matched)


def _iter_key_info(bucket: str, prefix: str) -> Iterator[tuple[str, int, str]]:
    from botocore.exceptions import ClientError

    paginator = client().get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", ()):
                yield obj["Key"], int(obj["Size"]), str(obj.get("ETag", "")).strip('"')
    except ClientError as exc:
        _raise_no_such_bucket(exc, bucket)
        raise


def expand_uri_glob(pattern: str) -> list[str]:
    """Sorted s3:// URIs of the objects matching a glob (`*`, `?`, `[..]`, `**`).

    Without wildcards, an existing object matches itself and a "directory" prefix matches
    every object under it (hidden names, what lies under hidden directories, and directory
    markers excepted), as a local directory expands. A missing bucket raises S3PathError;
    a pattern that matches nothing returns [] (`list_objects`, without sizes and ETags).
    """
    return [obj.uri for obj in list_objects(pattern)]
