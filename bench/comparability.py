"""Which measured pairs are not compared: the two sides do different work, so no ratio is taken.

One registry for the benchmark scripts (which mark their figures `not_comparable` when they
measure) and for bench/run.py (which applies it again to figures kept from earlier runs, so a
rule added after a measurement is not bypassed by `--merge` or `--render`).
"""

from __future__ import annotations

# (benchmark, text the figure's name contains, anchor impl) -> why the two sides differ
NOT_COMPARABLE: dict[tuple[str, str, str], str] = {
    ("filters", "code_stars", "dolma"):
        "dolma's code_starcoder_taggers_v2 computes StarCoder's text statistics (comment/code ratios, ...) "
        "besides the star count; dolmino only reads the count from metadata: different work",
    ("filters", "code_word_frequency", "dolma"):
        "dolma's code_redpajama_taggers_v1 computes RedPajama's line-length and alphanumeric rules, not "
        "dolmino's top-1/top-2 word-frequency check: different work",
    ("filters", "repeated_ngrams", "datatrove"):
        "datatrove's GopherRepetitionFilter computes Gopher's duplicate line/paragraph fractions and top / duplicate "
        "n-gram character fractions over spaCy words, not >= 32 consecutive repeats of a 1..13-token n-gram: "
        "a different check",
    ("dedup", "minhash signatures docs/s per core", "datatrove"):
        "datatrove's figure is the wall time of its signature stage over its own planted documents (reading "
        "JSONL, word tokenization, writing signature files); dolmino's signs the corpus texts in memory: "
        "different inputs and different work (the end-to-end dedup figures compare like with like)",
    # The figure of that name, measured until 2026-12-06; the bench now reports "dedup/minhash summed peak RSS
    # (every process)", which this rule does not match.
    ("dedup", "dedup/minhash peak RSS", "datatrove"):
        "dolmino's figure counted the JVM and its largest Python worker per core only, not the driver's Python or "
        "PySpark's daemon, while datatrove's is its whole process: not the same count (measured before "
        "2026-12-06; the bench now reports every process's peak, summed)",
}


def not_comparable(benchmark: str, figure: str, impl: str) -> str | None:
    """Why `impl`'s figure `figure` of `benchmark` is not compared with dolmino's, or None."""
    for (bench, part, anchor), why in NOT_COMPARABLE.items():
        if bench == benchmark and anchor == impl and part in figure:
            return why
    return None
