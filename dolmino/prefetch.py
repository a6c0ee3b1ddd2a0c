"""Small S3 objects fetched whole, ahead of the reader, several at a time.

A build task groups many small input files (`dolmino.build.inputs.group_tasks`), so that
20,000 files are a few tasks rather than 20,000. On S3 each file is one GET whose first byte
takes tens of milliseconds; read one after another, a task of 20,000 small objects spends
20,000 x that latency waiting while its core idles (measured: 500 files with a 20 ms
first-byte delay took 12.3 s to tag, 1.8 s without the delay). A `ReadAhead` keeps the next
objects' GETs in flight on a few threads, bounded in count and in bytes, and hands each one's
bytes to the reader in order.

It only ever speeds a read up: local paths, objects over `MAX_OBJECT_BYTES`, a URI asked
for out of order and any failed fetch give None, and the reader then opens the object
itself, as it would without read-ahead, and reports any error the usual way.

A size may be unknown (None): the mix's pool stage reads attribute files whose sizes no
listing gave it. Such an object holds `MAX_OBJECT_BYTES` of the byte bound while in flight,
and its fetch gives up when the response's length says it is larger (the reader then streams
it, one request more than without read-ahead, for an object large enough to dwarf it).
"""

from __future__ import annotations

from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable

# Objects a task keeps in flight at once (a build's --read-ahead; 0 reads one at a time).
DEFAULT_READ_AHEAD = 16
# Larger objects stream through the reader as before: their transfer and parse dwarf the
# first-byte wait, and holding them whole would cost memory.
MAX_OBJECT_BYTES = 4 << 20
# Bytes fetched but not yet read, per task (one Python worker each): the bound on memory.
MAX_BYTES_AHEAD = 32 << 20


def _get_object(uri: str, max_bytes: int) -> bytes | None:
    """The object's bytes; None, without reading its body, when it is larger than `max_bytes`."""
    from dolmino.s3 import client, split_uri

    bucket, key = split_uri(uri)
    response = client().get_object(Bucket=bucket, Key=key)
    if int(response.get("ContentLength", 0)) > max_bytes:
        response["Body"].close()
        return None
    return response["Body"].read()


class ReadAhead:
    """`take(uri)`, called in the order of `items` ((uri, size or None) pairs), gives the
    object's bytes, or None when it was not fetched ahead. Use it as a context manager:
    leaving cancels the fetches nobody will take. `fetch(uri, max_bytes)` gives the bytes,
    or None for an object larger than `max_bytes`."""

    def __init__(self, items: Iterable[tuple[str, int | None]], threads: int = DEFAULT_READ_AHEAD, *,
                 max_object_bytes: int = MAX_OBJECT_BYTES, max_bytes_ahead: int = MAX_BYTES_AHEAD,
                 fetch: Callable[[str, int], bytes | None] = _get_object):
        # An unknown size reserves the largest an object may be.
        self._todo = deque((uri, max_object_bytes if size is None else size) for uri, size in items
                           if threads > 0 and uri.startswith("s3://") and (size is None or size <= max_object_bytes))
        self._ahead: deque[tuple[str, int, Future]] = deque()
        self._waiting = Counter(uri for uri, _ in self._todo)  # in _todo or _ahead, not taken yet
        self._bytes = 0
        self._threads = threads
        self._max_bytes = max_bytes_ahead
        self._max_object = max_object_bytes
        self._fetch = fetch
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="read-ahead") if self._todo else None
        self.fetched = 0  # objects whose bytes were handed to the reader
        self._fill()

    def _fill(self) -> None:
        while self._todo and len(self._ahead) < self._threads and (
                not self._ahead or self._bytes + self._todo[0][1] <= self._max_bytes):
            uri, size = self._todo.popleft()
            self._ahead.append((uri, size, self._pool.submit(self._fetch, uri, self._max_object)))
            self._bytes += size

    def take(self, uri: str) -> bytes | None:
        if not self._waiting[uri]:
            return None
        skipped = next((i for i, (queued, _, _) in enumerate(self._ahead) if queued == uri), None)
        if skipped is None:
            # The reader skipped everything in flight: drop it, and the queue up to `uri`.
            self._drop(len(self._ahead))
            while self._todo[0][0] != uri:
                self._waiting[self._todo.popleft()[0]] -= 1
            self._fill()
            skipped = 0
        self._drop(skipped)
        _, size, future = self._ahead.popleft()
        self._bytes -= size
        self._waiting[uri] -= 1
        try:
            data = future.result()
        except Exception:  # noqa: BLE001 - the reader opens the object itself and reports the error
            data = None
        self._fill()
        if data is not None:
            self.fetched += 1
        return data

    def _drop(self, n: int) -> None:
        """Cancel the first `n` fetches in flight (objects the reader went past)."""
        for _ in range(n):
            queued, size, future = self._ahead.popleft()
            future.cancel()
            self._bytes -= size
            self._waiting[queued] -= 1

    def close(self) -> None:
        if self._pool is not None:
            for _, _, future in self._ahead:
                future.cancel()
            self._ahead.clear()
            self._todo.clear()
            self._waiting.clear()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
