"""ReadAhead: small S3 objects fetched concurrently, handed over in order, bounded, never required."""

from __future__ import annotations

import threading
import time

import pytest

from dolmino.prefetch import ReadAhead


def _uris(n: int) -> list[str]:
    return [f"s3://bucket/part-{i:03d}.jsonl.zst" for i in range(n)]


class Recorder:
    """A fetch that records which URIs were asked for and returns their names as bytes."""

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.fail = fail

    def __call__(self, uri: str, max_bytes: int) -> bytes | None:
        with self.lock:
            self.calls.append(uri)
        if uri in self.fail:
            raise OSError(f"{uri}: connection reset")
        data = uri.encode()
        return None if len(data) > max_bytes else data

    def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + 5
        while len(self.calls) < n and time.monotonic() < deadline:
            time.sleep(0.005)


def test_objects_come_back_in_order_and_local_or_large_ones_are_left_to_the_reader():
    fetch = Recorder()
    items = [(u, 100) for u in _uris(20)] + [("/local/part.jsonl.zst", 10), ("s3://bucket/huge.jsonl", 5 << 20)]
    with ReadAhead(items, 4, fetch=fetch) as ahead:
        assert [ahead.take(u) for u in _uris(20)] == [u.encode() for u in _uris(20)]
        assert ahead.take("/local/part.jsonl.zst") is None
        assert ahead.take("s3://bucket/huge.jsonl") is None
        assert ahead.fetched == 20
    assert sorted(fetch.calls) == _uris(20)  # each object once; neither the local file nor the large one


def test_fetches_run_concurrently():
    """Four fetches that can only finish together: one at a time they would wait forever."""
    barrier = threading.Barrier(4, timeout=10)

    def fetch(uri: str, max_bytes: int) -> bytes:
        barrier.wait()
        return uri.encode()

    with ReadAhead([(u, 10) for u in _uris(4)], 4, fetch=fetch) as ahead:
        assert [ahead.take(u) for u in _uris(4)] == [u.encode() for u in _uris(4)]


def test_bytes_and_objects_ahead_are_bounded():
    fetch = Recorder()
    uris = _uris(10)
    with ReadAhead([(u, 10) for u in uris], 8, fetch=fetch, max_bytes_ahead=30) as ahead:
        fetch.wait_for(3)
        time.sleep(0.05)
        assert fetch.calls == uris[:3]  # 30 bytes ahead, not 8 objects
        ahead.take(uris[0])
        fetch.wait_for(4)
        time.sleep(0.05)
        assert fetch.calls == uris[:4]
    fetch = Recorder()
    with ReadAhead([(u, 10) for u in uris], 2, fetch=fetch) as ahead:
        fetch.wait_for(2)
        time.sleep(0.05)
        assert fetch.calls == uris[:2]  # at most `threads` objects ahead
    fetch = Recorder()  # an object larger than the byte bound still goes, alone
    with ReadAhead([("s3://b/big", 100), ("s3://b/next", 1)], 4, fetch=fetch, max_bytes_ahead=50) as ahead:
        fetch.wait_for(1)
        time.sleep(0.05)
        assert fetch.calls == ["s3://b/big"]
        assert ahead.take("s3://b/big") == b"s3://b/big" and ahead.take("s3://b/next") == b"s3://b/next"


def test_a_failed_fetch_gives_none_and_the_rest_still_arrive():
    uris = _uris(6)
    with ReadAhead([(u, 10) for u in uris], 3, fetch=Recorder(fail={uris[2]})) as ahead:
        got = [ahead.take(u) for u in uris]
    assert got[2] is None
    assert [g for i, g in enumerate(got) if i != 2] == [u.encode() for i, u in enumerate(uris) if i != 2]
    assert ahead.fetched == 5


@pytest.mark.parametrize("threads", [2, 5])
def test_skipped_objects_are_dropped_even_past_the_window(threads):
    """The reader may go past objects (fewer or other units read than planned): what it asks
    for next still comes back, and what it skipped is not handed out later."""
    uris = _uris(12)
    with ReadAhead([(u, 10) for u in uris], threads, fetch=Recorder()) as ahead:
        assert ahead.take(uris[1]) == uris[1].encode()
        assert ahead.take(uris[9]) == uris[9].encode()
        assert ahead.take(uris[0]) is None and ahead.take(uris[5]) is None
        assert ahead.take("s3://bucket/never-listed") is None
        assert ahead.take(uris[10]) == uris[10].encode() and ahead.take(uris[11]) == uris[11].encode()
        assert ahead.take(uris[11]) is None  # each object once


def test_zero_threads_and_close_fetch_nothing_more():
    fetch = Recorder()
    with ReadAhead([(u, 10) for u in _uris(5)], 0, fetch=fetch) as ahead:
        assert ahead.take(_uris(5)[0]) is None
    assert fetch.calls == []
    ahead = ReadAhead([(u, 10) for u in _uris(5)], 2, fetch=fetch)
    ahead.close()
    assert all(ahead.take(u) is None for u in _uris(5))


def test_unknown_sizes_hold_the_largest_object_each_and_large_ones_go_to_the_reader():
    """Attribute files come without sizes: each in flight counts as max_object_bytes, and one
    that turns out larger is handed back as None (the reader opens it), the rest in order."""
    fetch = Recorder()
    uris = _uris(8)
    long_uri = "s3://bucket/" + "x" * 60 + ".parquet"  # Recorder's object is its URI: 72 bytes
    with ReadAhead([(u, None) for u in uris] + [(long_uri, None)], 8, fetch=fetch, max_object_bytes=64,
                   max_bytes_ahead=64 * 3) as ahead:
        fetch.wait_for(3)
        time.sleep(0.05)
        assert fetch.calls == uris[:3]  # 3 x 64 bytes reserved, though each is 30
        assert [ahead.take(u) for u in uris] == [u.encode() for u in uris]
        assert ahead.take(long_uri) is None
        assert ahead.fetched == 8
    assert fetch.calls == uris + [long_uri]


def test_get_object_leaves_an_object_over_the_limit_unread(monkeypatch):
    import io

    import dolmino.s3
    from dolmino.prefetch import _get_object

    class Body(io.BytesIO):
        read_calls = 0

        def read(self, *a):
            Body.read_calls += 1
            return super().read(*a)

    class Client:
        def get_object(self, Bucket, Key):
            data = f"{Bucket}/{Key}".encode()
            return {"ContentLength": len(data), "Body": Body(data)}

    monkeypatch.setattr(dolmino.s3, "client", lambda: Client())
    assert _get_object("s3://bucket/key", 100) == b"bucket/key"
    assert Body.read_calls == 1
    assert _get_object("s3://bucket/key", 4) is None
    assert Body.read_calls == 1  # the body was closed, not read
