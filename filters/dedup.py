"""Deduplication stages on Spark RDDs of Dolma documents: exact and MinHash-LSH.

Unlike the per-document filters, a duplicate can only be recognised by looking at other
documents, so both stages take an RDD of document dicts and return
``(kept_rdd, stats)``. The kept RDD holds the *same* dict objects (with every key the
caller put in, e.g. ``token_ids``, ``loc`` or a private ``_record``); only which documents
survive changes. ``stats`` is a plain JSON-ready dict computed eagerly (small Spark
actions; nothing proportional to the data is collected on the driver):

    docs_in, kept_docs, removed_docs, removed {reason: docs},
    duplicate_clusters (clusters of 2 or more), cluster_sizes {"1", "2", "3-5", "6-10",
    "11-100", ">100": number of clusters}, largest_cluster, params, ...

so that ``docs_in == kept_docs + removed_docs`` and ``sum(cluster_sizes) == kept_docs``
(every cluster keeps exactly one member; a unique document is a cluster of size 1).

Keep rule (both stages): each document gets a *keep key*, by default a 128-bit blake2b
hash of ``(source, id, loc)`` (`document_key`); in every cluster the member with the
smallest key survives. The key depends only on the document, so the kept set is the same
whatever the partitioning, the number of executors or the input order. Hashing, rather than
ordering by ``(source, id, loc)``, keeps the choice unbiased: no input file (e.g. the one
that sorts first) systematically wins. The build adds a unique ``loc`` (``path:line``) to
every document, so keys are unique; `minhash_dedup` checks this and raises
`DedupInputError` otherwise (a shared key would merge two documents into one graph node).

Exact dedup hashes the content (default: the exact UTF-8 bytes of ``text``; optional
normalisations below) with 128-bit blake2b and keeps one document per hash.

MinHash dedup: datasketch-identical signatures (`filters.minhash`), LSH banding in Spark
(``(band, band_hash) -> doc key``), candidate pairs from each band bucket, optional
verification of candidates by the MinHash Jaccard estimate (on by default, see
`minhash_dedup`), connected components over the verified edges with the
large-star/small-star algorithm (Kiveris et al., 2014) entirely in Spark, and then every
component member except the one with the smallest key is removed as ``near_duplicate``.
Near-duplicate clusters are transitive: A~B and B~C put A, B and C in one cluster even
if A and C are less similar than the threshold (as in datatrove and text-dedup).
"""

from __future__ import annotations

import hashlib
import re
import struct
import unicodedata
from functools import partial
from operator import add
from typing import Any, Callable, Hashable, Iterator

import numpy as np

from filters.minhash import MinHashConfig, MinHasher, band_hashes

EXACT_REASON = "exact_duplicate"
NEAR_REASON = "near_duplicate"

SIZE_BINS: tuple[tuple[str, int, int | None], ...] = (
    ("1", 1, 1), ("2", 2, 2), ("3-5", 3, 5), ("6-10", 6, 10), ("11-100", 11, 100), (">100", 101, None))

# Copies of one signature in a bucket join their first holder; buckets of up to this many
# distinct signatures are then verified pair by pair (PAIRWISE_BLOCK slots compared at a time,
# linked with a local union-find), as datasketch's jaccard over every candidate pair links them.
# Past it, each distinct signature is checked against a growing list of representatives
# (at most MAX_REPRESENTATIVES): bounded work, but a member like one that is no representative
# is not linked to it. Until 2026-12-07 that held from 257 members, copies included: a bucket
# of 300 pages of one template gave 82 clusters where every pair compared gives 29 (a tester).
MAX_PAIRWISE_BUCKET = 1024
# The clustering rules' revision, in the key of a source's MinHash cluster set (dolmino/build/tag.py):
# clusters an earlier rule stored are not reused, so a build from stored attributes removes what a
# clean one does. 2: the pairwise check above (a bucket of more than 256 members, copies included,
# was checked against representatives only); revision 1 had no key.
CLUSTER_REVISION = 2
MAX_REPRESENTATIVES = 1024
PAIRWISE_BLOCK = 1 << 24
# Connected components run on about this many edges per partition (at least one
# partition, at most as many as the edges already have): Spark's per-task cost dominates
# the rounds on small graphs.
EDGES_PER_PARTITION = 250_000
# Up to this many removed keys are broadcast and the documents filtered in place; above
# it the documents are shuffled against the removed keys (subtractByKey).
BROADCAST_REMOVED_LIMIT = 1_000_000

_WHITESPACE = re.compile(r"\s+")


class DedupInputError(ValueError):
    """A document the dedup stages cannot handle (no text, no id, duplicate keys...)."""


# ---------------------------------------------------------------------------- keys


def _field(doc: Any, name: str, required: bool) -> str:
    if not isinstance(doc, dict):
        raise DedupInputError(f"dedup expects document dicts, got {type(doc).__name__}")
    value = doc.get(name)
    if value is None:
        if required:
            raise DedupInputError(f"document at {doc.get('loc', '?')!s} has no {name!r}")
        return ""
    return value if isinstance(value, str) else str(value)


def document_key(doc: dict) -> int:
    """Default keep key: 128-bit blake2b of the length-prefixed (source, id, loc)."""
    h = hashlib.blake2b(digest_size=16, person=b"dolmino-keep")
    for name, required in (("source", False), ("id", True), ("loc", False)):
        data = _field(doc, name, required).encode("utf-8", "surrogatepass")
        h.update(struct.pack("<I", len(data)))
        h.update(data)
    return int.from_bytes(h.digest(), "big")


def _text(doc: dict) -> str:
    text = doc.get("text") if isinstance(doc, dict) else None
    if not isinstance(text, str):
        where = doc.get("loc") or doc.get("id") if isinstance(doc, dict) else "?"
        raise DedupInputError(
            f"document {where!s} has no text (got {type(text).__name__}); dedup needs the text, "
            "so build tasks must keep it (FileTask.keep_text)")
    return text


def _normalise_none(text: str) -> str:
    return text


def _normalise_whitespace(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def _normalise_lower_whitespace(text: str) -> str:
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


# Exact dedup content normalisations: "none" (default) compares the exact text; the others
# also catch copies that differ only in whitespace runs / leading and trailing space, and
# additionally in letter case and Unicode compatibility forms (NFKC).
NORMALISATIONS: dict[str, Callable[[str], str]] = {
    "none": _normalise_none,
    "whitespace": _normalise_whitespace,
    "lower_whitespace": _normalise_lower_whitespace,
}


def _text_content(normalise: Callable[[str], str], doc: dict) -> str:
    return normalise(_text(doc))


def content_hash(content: str | bytes) -> int:
    """128-bit blake2b of the content; lone surrogates (from undecodable input) are kept."""
    data = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else bytes(content)
    return int.from_bytes(hashlib.blake2b(data, digest_size=16, person=b"dolmino-exact").digest(), "big")


# ---------------------------------------------------------------------------- stats


def size_bin(size: int) -> str:
    for name, lo, hi in SIZE_BINS:
        if size >= lo and (hi is None or size <= hi):
            return name
    raise ValueError(f"cluster size must be >= 1, got {size}")


def _empty_tally() -> dict:
    return {"clusters": 0, "docs": 0, "largest": 0, "bins": {name: 0 for name, _, _ in SIZE_BINS}}


def _tally_add(tally: dict, size: int) -> dict:
    tally["clusters"] += 1
    tally["docs"] += size
    tally["largest"] = max(tally["largest"], size)
    tally["bins"][size_bin(size)] += 1
    return tally


def _tally_merge(a: dict, b: dict) -> dict:
    a["clusters"] += b["clusters"]
    a["docs"] += b["docs"]
    a["largest"] = max(a["largest"], b["largest"])
    for name in a["bins"]:
        a["bins"][name] += b["bins"][name]
    return a


def _tally_sizes(sizes_rdd) -> dict:
    """Histogram of cluster sizes over an RDD of ints, merged on the driver (one small dict)."""
    return sizes_rdd.aggregate(_empty_tally(), _tally_add, _tally_merge)


def _stage_stats(stage: str, reason: str, params: dict, docs_in: int, tally: dict) -> dict:
    """Stats for a stage from the tally of all its clusters (unique documents included)."""
    if tally["docs"] != docs_in:
        raise AssertionError(f"{stage}: clusters hold {tally['docs']} documents but {docs_in} came in")
    removed = tally["docs"] - tally["clusters"]
    return {
        "stage": stage,
        "params": params,
        "docs_in": docs_in,
        "kept_docs": docs_in - removed,
        "removed_docs": removed,
        "removed": {reason: removed},
        "duplicate_clusters": tally["clusters"] - tally["bins"]["1"],
        "cluster_sizes": dict(tally["bins"]),
        "largest_cluster": tally["largest"],
    }


_SUMMED = ("docs_in", "kept_docs", "removed_docs", "duplicate_clusters", "docs_without_shingles",
           "candidate_pairs", "rejected_pairs", "edges")


def merge_stats(a: dict, b: dict) -> dict:
    """Combine the stats of the same stage run on two disjoint inputs (e.g. two shards)."""
    if a.get("stage") != b.get("stage") or a.get("params") != b.get("params"):
        raise ValueError(f"cannot merge stats of different stages/params: {a.get('stage')} {a.get('params')} "
                         f"vs {b.get('stage')} {b.get('params')}")
    out = dict(a)
    for key in _SUMMED:
        if key in a or key in b:
            out[key] = a.get(key, 0) + b.get(key, 0)
    out["removed"] = {r: a["removed"].get(r, 0) + b["removed"].get(r, 0)
                      for r in sorted(set(a["removed"]) | set(b["removed"]))}
    out["cluster_sizes"] = {name: a["cluster_sizes"][name] + b["cluster_sizes"][name] for name, _, _ in SIZE_BINS}
    out["largest_cluster"] = max(a["largest_cluster"], b["largest_cluster"])
    if "cc_iterations" in a or "cc_iterations" in b:
        out["cc_iterations"] = max(a.get("cc_iterations", 0), b.get("cc_iterations", 0))
    return out


def check_stats(stats: dict) -> None:
    """Raise AssertionError unless the stage's counts balance (in = kept + removed)."""
    removed = sum(stats["removed"].values())
    if stats["docs_in"] != stats["kept_docs"] + removed or removed != stats["removed_docs"]:
        raise AssertionError(f"{stats['stage']}: docs_in {stats['docs_in']} != kept {stats['kept_docs']} "
                             f"+ removed {stats['removed']}")
    if sum(stats["cluster_sizes"].values()) != stats["kept_docs"]:
        raise AssertionError(f"{stats['stage']}: {sum(stats['cluster_sizes'].values())} clusters "
                             f"but {stats['kept_docs']} kept documents")


# ---------------------------------------------------------------------------- exact


def _exact_record(content_of: Callable, keep_key: Callable, doc: dict) -> tuple:
    return content_hash(content_of(doc)), (keep_key(doc), 1, doc)


def _keep_smaller(a: tuple, b: tuple) -> tuple:
    """Reduce two (keep_key, count, doc) holders of the same content to the survivor.

    Equal keys mean the same (source, id, loc) with the same content, i.e. the same
    document read twice; either copy is then equally right.
    """
    winner = a if a[0] <= b[0] else b
    return winner[0], a[1] + b[1], winner[2]


def exact_dedup(rdd, key_fn: Callable[[dict], str | bytes] | None = None, *, normalize: str = "none",
                keep_key_fn: Callable[[dict], Hashable] | None = None, num_partitions: int | None = None):
    """Keep one document per distinct content; returns (kept_rdd, stats).

    key_fn: what "the same content" means, doc -> str | bytes (hashed with 128-bit
        blake2b). Default: the text after `normalize` ("none": exact bytes; see
        NORMALISATIONS). Pass e.g. ``lambda d: d["metadata"]["url"]`` to dedup by URL.
    keep_key_fn: the keep-rule order (default `document_key`); the smallest key of each
        group survives. Must be picklable and totally ordered.

    One shuffle of the documents (reduceByKey with map-side combining), no join: the
    survivor travels with its group's running minimum. Nothing is persisted: the stats
    action writes the shuffle once and the kept RDD re-reads those shuffle files (Spark
    skips the map stage), so documents are not held in memory twice. Removed reason:
    exact_duplicate.
    """
    if normalize not in NORMALISATIONS:
        raise ValueError(f"normalize must be one of {sorted(NORMALISATIONS)}, got {normalize!r}")
    content_of = key_fn if key_fn is not None else partial(_text_content, NORMALISATIONS[normalize])
    keep_key = keep_key_fn or document_key
    groups = rdd.map(partial(_exact_record, content_of, keep_key)).reduceByKey(_keep_smaller, num_partitions)
    tally = _tally_sizes(groups.map(lambda kv: kv[1][1]))
    params = {"normalize": normalize if key_fn is None else "custom_key_fn",
              "keep_rule": "smallest keep key" if keep_key_fn else "smallest blake2b(source, id, loc)"}
    stats = _stage_stats("exact", EXACT_REASON, params, tally["docs"], tally)
    check_stats(stats)
    return groups.map(lambda kv: kv[1][2]), stats


# ---------------------------------------------------------------------------- MinHash


def _signature_record(hasher: MinHasher, ngram: int, keep_key: Callable, doc: dict) -> tuple:
    """(keep_key, signature bytes or None) for one document."""
    sig = hasher.text_signature(_text(doc), ngram)
    return keep_key(doc), (None if sig is None else sig.tobytes())


def _band_records(bands: int, rows: int, verify: bool, record: tuple) -> Iterator[tuple]:
    key, sig_bytes = record
    sig = np.frombuffer(sig_bytes, dtype=np.uint32)
    value = (key, sig_bytes) if verify else key
    for band, h in enumerate(band_hashes(sig, bands, rows)):
        yield (band, h), value


def _roots(parent: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """The union-find roots of `nodes` (every parent is at most its node: the root is the smallest)."""
    while not np.array_equal(up := parent[nodes], nodes):
        nodes = up
    return nodes


def _union(parent: np.ndarray, nodes: np.ndarray) -> None:
    """Join `nodes` (a signature and those found like it) under the smallest of their roots, in a
    few array operations: a Python call per similar pair cost 0.27 s on a bucket of 1,024 alike
    signatures (523,776 pairs; 7 ms when such a bucket was checked against representatives)."""
    roots = _roots(parent, nodes)
    parent[roots] = parent[nodes] = roots.min()


def _verified_bucket_edges(members: list, min_equal: int) -> tuple[list[tuple], int, int]:
    """Edges (key, smaller key) linking members whose signatures agree on >= min_equal slots.

    Members are sorted by key, so the outcome depends only on the bucket's contents. A copy
    of a signature is linked to its first holder (one comparison). Up to MAX_PAIRWISE_BUCKET
    distinct signatures, every pair of them is checked and linked through a local union-find,
    so the emitted edges connect exactly what the pairwise similarities connect. More: each
    is checked against the representatives seen so far.
    """
    members.sort(key=lambda m: m[0])
    keys = [m[0] for m in members]
    sigs = np.stack([np.frombuffer(m[1], dtype=np.uint32) for m in members])
    _, first, inverse = np.unique(sigs, axis=0, return_index=True, return_inverse=True)
    parent = first[inverse.reshape(-1)]  # a copy points at its signature's first (smallest) holder
    distinct = np.sort(first)
    compared = len(members) - len(distinct)
    rejected = 0
    d = len(distinct)
    if d <= MAX_PAIRWISE_BUCKET:
        unique_sigs = sigs[distinct]
        step = max(1, PAIRWISE_BLOCK // (d * sigs.shape[1]))
        for lo in range(0, d - 1, step):
            equal = (unique_sigs[lo:lo + step, None, :] == unique_sigs[None, lo:, :]).sum(axis=2)
            similar = np.triu(equal >= min_equal, 1)  # row r is signature lo + r, column c is lo + c
            for r in np.flatnonzero(similar.any(axis=1)).tolist():
                _union(parent, distinct[lo + np.append(r, np.flatnonzero(similar[r]))])
            pairs = sum(d - 1 - i for i in range(lo, min(lo + step, d)))
            compared += pairs
            rejected += pairs - int(similar.sum())
    else:
        reps = [int(distinct[0])]
        for j in distinct[1:].tolist():
            matches = np.flatnonzero((sigs[reps] == sigs[j]).sum(axis=1) >= min_equal)
            compared += len(reps)
            rejected += len(reps) - len(matches)
            if len(matches):
                _union(parent, np.array([j] + [reps[m] for m in matches.tolist()]))
            elif len(reps) < MAX_REPRESENTATIVES:
                reps.append(j)
    roots = _roots(parent, np.arange(len(members)))
    linked = np.flatnonzero(roots != np.arange(len(members)))
    return [(keys[j], keys[root]) for j, root in zip(linked.tolist(), roots[linked].tolist())], compared, rejected


def _bucket_edges(verify: bool, min_equal: int, bucket: tuple) -> tuple[list[tuple], int, int]:
    """(edges, pairs compared, pairs rejected) for one LSH bucket."""
    members = list(bucket[1])
    if len(members) < 2:
        return [], 0, 0
    if verify:
        return _verified_bucket_edges(members, min_equal)
    members.sort()
    root = members[0]
    return [(m, root) for m in members[1:]], len(members) - 1, 0


def _large_star(item: tuple) -> Iterator[tuple]:
    """Point every larger neighbour of u at the smallest node of u's closed neighbourhood."""
    u, neighbours = item
    nbrs = set(neighbours)
    m = min(min(nbrs), u)
    for v in nbrs:
        if v > u:
            yield v, (m, m != u)  # (edge (v, m), changed): the input edge was (v, u)


def _small_star(item: tuple) -> Iterator[tuple]:
    """Point u and all of its smaller neighbours at the smallest of them.

    Also passes on how many of the incoming edges the large-star step changed, so that one
    Spark action per round is enough to test convergence.
    """
    u, incoming = item
    nbrs = set()
    large_changes = 0
    for v, changed in incoming:
        nbrs.add(v)
        large_changes += changed
    m = min(nbrs)
    yield u, m, large_changes  # (u, m) was an input edge: not a change by this step
    for v in nbrs:
        if v != m:
            yield v, m, 1


def _both_directions(edge: tuple) -> tuple:
    return (edge[0], edge[1]), (edge[1], edge[0])


def connected_components(edges, *, max_iterations: int = 100, num_partitions: int | None = None):
    """Connected components of an undirected graph given as an RDD of (a, b) node pairs.

    Large-star / small-star (Kiveris, Lattanzi, Mirrokni, Rastogi, Vassilvitskii 2014):
    alternately re-point edges at the smallest node of a neighbourhood until every
    component is a star around its smallest node; O(log^2 n) rounds, no driver-side
    collection of edges, each round two shuffles and one Spark action. Converged when
    neither step changed an edge (each step counts the edges it changed).

    Returns (RDD of (node, root) for every node that is not the smallest of its
    component, number of rounds). Nodes must be hashable and totally ordered.
    """
    from pyspark import StorageLevel

    current = edges.filter(lambda e: e[0] != e[1]).map(lambda e: (e[0], e[1]) if e[0] > e[1] else (e[1], e[0]))
    held = None
    rounds = 0
    converged = current.isEmpty()
    while not converged:
        if rounds >= max_iterations:
            if held is not None:
                held.unpersist()
            raise RuntimeError(f"connected components did not converge in {max_iterations} rounds")
        rounds += 1
        large = current.flatMap(_both_directions).groupByKey(num_partitions).flatMap(_large_star)
        small = large.groupByKey(num_partitions).flatMap(_small_star)
        small.persist(StorageLevel.MEMORY_AND_DISK)
        changes = small.map(lambda t: t[2]).sum()
        if held is not None:
            held.unpersist()
        held = small
        current = small.map(lambda t: (t[0], t[1]))
        converged = changes == 0
    roots = current.distinct(num_partitions)
    roots.persist(StorageLevel.MEMORY_AND_DISK)
    roots.count()
    if held is not None:
        held.unpersist()
    return roots, rounds


def _params(config: MinHashConfig, verify: bool, custom_keep_key: bool) -> dict:
    bands, rows = config.banding()
    return {"num_perm": config.num_perm, "ngram": config.ngram, "threshold": float(config.threshold),
            "seed": config.seed, "bands": bands, "rows": rows, "verify": verify,
            "keep_rule": "smallest keep key" if custom_keep_key else "smallest blake2b(source, id, loc)"}


def minhash_signatures(rdd, config: MinHashConfig, keep_key_fn: Callable[[dict], Hashable] | None = None):
    """Stage 1: RDD of (keep key, signature as uint32 bytes, or None for a document with no words)."""
    hasher = MinHasher(config.num_perm, config.seed)
    return rdd.map(partial(_signature_record, hasher, config.ngram, keep_key_fn or document_key))


def lsh_edges(signatures_rdd, config: MinHashConfig, *, verify: bool = True, num_partitions: int | None = None):
    """Stage 2: band the signatures, turn each bucket into (key, smaller key) edges.

    Returns (edges RDD, persisted and distinct; counts {"candidate_pairs", "rejected_pairs",
    "edges"}). Unpersist the edges when done with them.
    """
    from pyspark import StorageLevel

    bands, rows = config.banding()
    min_equal = int(np.ceil(float(config.threshold) * config.num_perm - 1e-9))
    buckets = (signatures_rdd.filter(lambda kv: kv[1] is not None)
               .flatMap(partial(_band_records, bands, rows, verify))
               .groupByKey(num_partitions)
               .map(partial(_bucket_edges, verify, min_equal))
               .filter(lambda out: out[1] > 0))
    buckets.persist(StorageLevel.MEMORY_AND_DISK)
    compared, rejected = buckets.map(lambda out: (out[1], out[2])).fold(
        (0, 0), lambda a, b: (a[0] + b[0], a[1] + b[1]))
    edges = buckets.flatMap(lambda out: out[0]).distinct(num_partitions)
    edges.persist(StorageLevel.MEMORY_AND_DISK)
    n_edges = edges.count()
    buckets.unpersist()
    return edges, {"candidate_pairs": int(compared), "rejected_pairs": int(rejected), "edges": int(n_edges)}


def near_duplicate_clusters(rdd, num_perm: int = 128, ngram: int = 5, threshold: float = 0.8, seed: int = 1, *,
                            bands: int | None = None, rows: int | None = None, verify: bool = True,
                            keep_key_fn: Callable[[dict], Hashable] | None = None,
                            num_partitions: int | None = None, max_iterations: int = 100):
    """Stages 1-3 of `minhash_dedup`: which documents to remove, and the stats.

    Returns (RDD of (keep key, keep key of the cluster's survivor) for every document to
    remove, persisted; stats). Useful on its own to inspect clusters (benchmarks do).
    """
    from pyspark import StorageLevel

    config = MinHashConfig(num_perm=num_perm, ngram=ngram, threshold=threshold, seed=seed, bands=bands, rows=rows)
    sigs = minhash_signatures(rdd, config, keep_key_fn)
    sigs.persist(StorageLevel.MEMORY_AND_DISK)
    docs_in, no_shingles = sigs.map(lambda kv: (1, int(kv[1] is None))).fold(
        (0, 0), lambda a, b: (a[0] + b[0], a[1] + b[1]))
    distinct_keys = sigs.keys().distinct(num_partitions).count()
    if distinct_keys != docs_in:
        sigs.unpersist()
        raise DedupInputError(f"document keys are not unique: {docs_in} documents but {distinct_keys} distinct "
                              "keys; give every document a unique (source, id, loc) or pass keep_key_fn")
    edges, edge_counts = lsh_edges(sigs, config, verify=verify, num_partitions=num_partitions)
    sigs.unpersist()
    cc_partitions = num_partitions or max(1, min(edges.getNumPartitions(),
                                                 -(-edge_counts["edges"] // EDGES_PER_PARTITION)))
    roots, rounds = connected_components(edges, max_iterations=max_iterations, num_partitions=cc_partitions)
    edges.unpersist()

    tally = _tally_sizes(roots.map(lambda kv: (kv[1], 1)).reduceByKey(add, cc_partitions).map(lambda kv: kv[1] + 1))
    singletons = docs_in - tally["docs"]  # documents in no component
    tally["clusters"] += singletons
    tally["docs"] += singletons
    tally["bins"]["1"] += singletons
    if singletons:
        tally["largest"] = max(tally["largest"], 1)
    stats = _stage_stats("minhash", NEAR_REASON, _params(config, verify, keep_key_fn is not None), int(docs_in), tally)
    stats.update({"docs_without_shingles": int(no_shingles), **edge_counts, "cc_iterations": rounds})
    check_stats(stats)
    return roots, stats


def drop_keys(rdd, keep_key_fn: Callable[[dict], Hashable], removed, n_removed: int, *,
              broadcast_limit: int = BROADCAST_REMOVED_LIMIT, num_partitions: int | None = None):
    """The documents of `rdd` whose keep key is not a key of the pair RDD `removed`.

    Few removals (<= broadcast_limit): the keys are collected once and broadcast, and the
    documents are filtered where they are, with no shuffle of the documents. Many: a
    subtractByKey, which shuffles the documents once.
    """
    if n_removed == 0:
        return rdd
    if n_removed <= broadcast_limit:
        keys = rdd.context.broadcast(frozenset(removed.keys().collect()))
        return rdd.filter(lambda d: keep_key_fn(d) not in keys.value)
    return rdd.map(lambda d: (keep_key_fn(d), d)).subtractByKey(removed, num_partitions).values()


def minhash_dedup(rdd, num_perm: int = 128, ngram: int = 5, threshold: float = 0.8, seed: int = 1, *,
                  bands: int | None = None, rows: int | None = None, verify: bool = True,
                  keep_key_fn: Callable[[dict], Hashable] | None = None, num_partitions: int | None = None,
                  max_iterations: int = 100, broadcast_limit: int = BROADCAST_REMOVED_LIMIT):
    """Remove near-duplicates (word-shingle Jaccard >= ~threshold); returns (kept_rdd, stats).

    num_perm, seed: MinHash permutations (datasketch.MinHash(num_perm, seed) signatures).
    ngram: words per shingle. threshold: target Jaccard similarity.
    bands, rows: LSH banding; derived from threshold and num_perm like datasketch
        (0.8 / 128 -> 9 bands x 13 rows) unless both are given.
    verify: True (default) keeps a candidate pair only if the signatures agree on at least
        threshold x num_perm slots (the MinHash Jaccard estimate). That removes the
        S-curve's false positives (at 0.8 with 9 bands x 13 rows, a pair at Jaccard 0.7
        still collides 8% of the time) at the cost of shipping signatures through the
        band shuffle. Recall is set by the bands either way: 40% of pairs at Jaccard
        0.8 (verification passes about half of those), 93% at 0.9, >99% from 0.95.
        False: every band collision is an edge (as datatrove and text-dedup do).
    keep_key_fn: keep-rule order (default `document_key`); keys must be unique.
    broadcast_limit: see `drop_keys`.

    Documents without any word have no signature and are kept (counted in
    ``docs_without_shingles``). The input RDD is evaluated twice (signatures, then the
    final filter): persist it first if it is expensive to recompute. The kept RDD depends
    on the removed keys (a broadcast, or a persisted RDD above `broadcast_limit`).
    """
    roots, stats = near_duplicate_clusters(
        rdd, num_perm, ngram, threshold, seed, bands=bands, rows=rows, verify=verify, keep_key_fn=keep_key_fn,
        num_partitions=num_partitions, max_iterations=max_iterations)
    kept = drop_keys(rdd, keep_key_fn or document_key, roots, stats["removed_docs"],
                     broadcast_limit=broadcast_limit, num_partitions=num_partitions)
    return kept, stats
