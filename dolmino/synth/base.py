"""The generator interface, its registry, and the records a generator yields.

A synthetic-data generator is a plain class, so that Spark can pickle it to executors and
a test can call it without Spark:

    class SomeGenerator:
        name = "some"                                   # the CLI / registry name
        def config(self) -> dict: ...                   # everything that changes the output
        def generate(self, partition, num_partitions, seed) -> Iterator[dict]: ...
        def input_paths(self) -> list[str]: ...         # optional: the files it reads (the
                                                        # runner refuses an --out among them)

`generate` yields, for every item it attempts, exactly one of
  * a Dolma document (`id`, `text`, `source`, `added`, `created`, `metadata`),
  * a rejection record made by `rejection(...)` (the item was attempted and refused,
    with a short reason), or
  * a quarantine record made by `quarantine(...)` (a generator that reads input files met
    a line it cannot read: not UTF-8, not JSON, missing fields),
and may also yield `request_stats(...)` records (counts of HTTP requests, retries, bad
responses) that are not items. The runner writes documents, counts rejections and
quarantined items by reason and refuses to finish unless attempted = kept + rejected +
quarantined, so nothing disappears silently.

Items are numbered globally (0 .. num_docs-1) and partition p owns a contiguous slice of
them. Every item draws its randomness from `item_rng(seed, name, index)`, so the same seed
gives the same documents whatever the partitioning and however often a job is resumed.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import random
from typing import Iterator, Protocol

# Fixed timestamps: output bytes must not depend on the wall clock (resumed partitions must
# match fresh ones byte for byte). Override per generator with `added=`.
DEFAULT_ADDED = "2024-11-24T00:00:00.000Z"

# Bump when the on-disk layout or record format changes, so old caches are not reused.
FORMAT_VERSION = 1

REGISTRY: dict[str, str] = {
    "arithmetic": "dolmino.synth.arithmetic:ArithmeticGenerator",
    "gsm8k_numbers": "dolmino.synth.gsm8k_numbers:Gsm8kNumberGenerator",
    "tulu_math": "dolmino.synth.llm:TuluMathGenerator",
    "mind": "dolmino.synth.llm:MindGenerator",
    "gsm8k_train": "dolmino.synth.gsm8k_train:Gsm8kTrainGenerator",
    "tinygsm": "dolmino.synth.tinygsm:TinyGsmGenerator",
    "owm_label": "dolmino.synth.owm_math:OwmLabelGenerator",
}


class Generator(Protocol):
    name: str

    def config(self) -> dict: ...

    def generate(self, partition: int, num_partitions: int, seed: int) -> Iterator[dict]: ...


def generator_class(name: str):
    if name not in REGISTRY:
        raise ValueError(f"unknown generator {name!r} (known: {', '.join(sorted(REGISTRY))})")
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_generator(name: str, **params):
    return generator_class(name)(**params)


def config_hash(generator, num_partitions: int, seed: int, config: dict | None = None) -> str:
    """Hash of everything that determines a partition's bytes (the cache key of a done-file)."""
    payload = {"format_version": FORMAT_VERSION, "generator": generator.name,
               "config": generator.config() if config is None else config, "num_partitions": num_partitions,
               "seed": seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def accepted_hashes(generator, num_partitions: int, seed: int) -> frozenset[str]:
    """This configuration's hash, and those earlier versions gave the same configuration
    (`legacy_configs()`, where a generator has it): the endpoint is hashed in its normalised
    form since 2026-12-06, and a run interrupted before could not be resumed (a reviewer)."""
    legacy = getattr(generator, "legacy_configs", lambda: [])()
    return frozenset([config_hash(generator, num_partitions, seed)]
                     + [config_hash(generator, num_partitions, seed, config) for config in legacy])


def partition_range(partition: int, num_partitions: int, num_items: int) -> range:
    """The global item indices partition `partition` of `num_partitions` owns (contiguous, balanced)."""
    if not 0 <= partition < num_partitions:
        raise ValueError(f"partition {partition} out of range 0..{num_partitions - 1}")
    return range(partition * num_items // num_partitions, (partition + 1) * num_items // num_partitions)


def item_rng(seed: int, name: str, index: int, salt: str = "") -> random.Random:
    """A private RNG for one item: independent of partitioning and of every other item."""
    digest = hashlib.sha256(f"{seed}\x00{name}\x00{index}\x00{salt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "little"))


def doc_id(name: str, seed: int, index: int) -> str:
    return f"{name}-s{seed}-{index:09d}"


def make_doc(name: str, seed: int, index: int, text: str, source: str, metadata: dict,
             added: str = DEFAULT_ADDED) -> dict:
    return {"id": doc_id(name, seed, index), "text": text, "source": source, "added": added,
            "created": added, "metadata": metadata}


def rejection(name: str, seed: int, index: int, reason: str, detail: str = "") -> dict:
    """An attempted item that was refused; `reason` is the counter key in the report."""
    return {"rejected": reason, "id": doc_id(name, seed, index), "detail": detail[:2000]}


def quarantine(name: str, seed: int, index: int, reason: str, path: str, line: int, detail: str = "",
               raw: bytes = b"") -> dict:
    """An input line the generator could not read; `reason` is the counter key in the report."""
    return {"quarantined": reason, "id": doc_id(name, seed, index), "path": path, "line": line,
            "detail": detail[:2000], "raw": raw[:2000].decode("utf-8", "replace")}


def request_stats(counts: dict) -> dict:
    """HTTP client counters for one partition (not an item)."""
    return {"request_stats": dict(counts)}


def is_rejection(record: dict) -> bool:
    return "rejected" in record


def is_quarantine(record: dict) -> bool:
    return "quarantined" in record


def is_request_stats(record: dict) -> bool:
    return "request_stats" in record
