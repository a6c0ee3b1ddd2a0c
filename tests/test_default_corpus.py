"""The embedded default corpus: real text for every source, valid input for the build.

`make demo` must work on a fresh machine, so each generator is checked for what the build
needs from it: Dolma documents with text, a Posts.xml that the Stack Exchange parser reads
without quarantining anything, and the same bytes on every run.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from dolmino import default_corpus
from dolmino.documents import Quarantine, read_documents
from filters.stackexchange import StackExchangeStats, read_stackexchange

DOLMA_KEYS = {"id", "text", "source", "added", "created", "metadata"}


@pytest.mark.parametrize("name", sorted(default_corpus.GENERATORS))
def test_every_generator_yields_real_dolma_documents(name):
    docs = list(itertools.islice(default_corpus.GENERATORS[name](), 40))
    assert len(docs) == 40, f"{name}: fewer than 40 documents"
    assert all(set(d) == DOLMA_KEYS for d in docs)
    assert all(d["source"] == name for d in docs)
    assert len({d["id"] for d in docs}) == len(docs), f"{name}: duplicate ids"
    texts = [d["text"] for d in docs]
    assert all(isinstance(t, str) and len(t.split()) >= 3 for t in texts)
    # Real prose or code, not filler: many distinct words across the sample.
    assert len({w for t in texts for w in t.split()}) > 300


def test_code_documents_carry_star_metadata_for_the_stars_filter():
    docs = list(itertools.islice(default_corpus.code_docs(), 300))
    stars = [d["metadata"]["max_stars_count"] for d in docs]
    assert all(isinstance(s, int) and s >= 0 for s in stars)
    assert any(s < 2 for s in stars) and any(s >= 2 for s in stars)
    assert all(d["metadata"]["stars_are_synthetic"] for d in docs)


def test_posts_xml_is_one_row_per_line_and_parses_without_quarantine(tmp_path: Path):
    data = default_corpus._posts_xml()
    assert data == default_corpus._posts_xml(), "Posts.xml must be deterministic"
    rows = [line for line in data.decode("utf-8").splitlines() if line.strip().startswith("<row")]
    assert all(line.rstrip().endswith("/>") for line in rows), "a row spans several lines"
    path = tmp_path / "Posts.xml"
    path.write_bytes(data)
    stats, quarantine = StackExchangeStats(), Quarantine()
    docs = list(read_stackexchange(str(path), stats=stats, quarantine=quarantine))
    assert quarantine.total == 0, dict(quarantine.counts)
    assert stats.questions_seen == 1000
    # The filter rules have work to do in both directions.
    assert 100 < len(docs) < stats.questions_seen
    assert set(stats.removed) >= {"question_score<3", "answer_score<5", "no_accepted_answer"}
    assert stats.questions_seen == len(docs) + sum(stats.removed.values())
    # Multi-paragraph bodies survive as text (newlines were encoded as &#xA;).
    assert any("\n" in d["text"] and "The answer is" in d["text"] for d in docs)


def test_written_files_read_back_and_mark_completion(tmp_path: Path, monkeypatch):
    small = {name: (lambda gen=gen: itertools.islice(gen(), 25)) for name, gen in default_corpus.GENERATORS.items()}
    monkeypatch.setattr(default_corpus, "GENERATORS", small)
    out = default_corpus.assemble(str(tmp_path / "corpus"))
    assert default_corpus.is_complete(out)
    for name in small:
        files = sorted((out / name).glob("*.jsonl.zst"))
        quarantine = Quarantine()
        docs = [d for f in files for _, d in read_documents(str(f), quarantine)]
        assert len(docs) == 25 and quarantine.total == 0
    first = (out / "web" / "web-0000.jsonl.zst").read_bytes()
    (out / "web" / "web-0000.jsonl.zst").write_bytes(first[:-10])  # damage: no longer complete
    assert not default_corpus.is_complete(out)
    default_corpus.assemble(str(out))
    assert (out / "web" / "web-0000.jsonl.zst").read_bytes() == first


def test_an_out_that_is_a_file_is_one_line(tmp_path, capsys):
    """Found by a tester: NotADirectoryError's traceback."""
    from dolmino.default_corpus import main

    (tmp_path / "afile").write_text("x")
    assert main(["--out", str(tmp_path / "afile")]) == 2
    assert "error: --out" in capsys.readouterr().err
