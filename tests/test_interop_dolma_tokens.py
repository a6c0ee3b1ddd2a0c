"""The real `dolma tokens` (dolma 1.2.1, in its own venv) against dolmino's encode_documents.

bench/interop_dolma_tokens.py does the work (inputs: the first lines of every shared corpus
file plus the edge cases; dolma through its CLI; comparison per (file, line)); this test runs
it small, for both control-token policies. The dolma venv is made by bench/anchors.py on
first use (about 2 minutes with network to PyPI, measured on the 2-core dev machine) and
reused afterwards; without network the test is skipped, saying so.
"""

from __future__ import annotations

import pytest

from bench.anchors import AnchorUnavailable, anchor_python


@pytest.fixture(scope="module")
def dolma_python(shared_corpus):
    try:
        return anchor_python("dolma")
    except AnchorUnavailable as exc:
        pytest.skip(f"the dolma 1.2.1 venv cannot be built here (no package registry?): {str(exc)[:300]}")


@pytest.mark.slow
@pytest.mark.parametrize("control_tokens", ["dolma", "literal"])
def test_dolma_tokens_and_dolmino_agree_per_document(tmp_path, dolma_python, control_tokens):
    from bench.interop_dolma_tokens import EDGE_FILE, run_check

    result = run_check(tmp_path, limit_per_file=15, control_tokens=control_tokens, python=dolma_python)
    assert result["unexplained"] == [], result["unexplained"]
    assert result["ok"] and result["identical"] >= 4 * 15 + 25
    edge = result["edge_cases_tokens"]
    # the cases where the semantics show, as both tools produced them
    for case in ("empty", "spaces_only", "whitespace_only", "unicode_whitespace_only"):
        assert edge[case] == {"dolmino": "skipped", "dolma": "skipped"}
    assert edge["lone_surrogate"]["dolma"] == edge["null_text"]["dolma"] == "skipped"
    assert edge["lone_surrogate"]["dolmino"] == edge["null_text"]["dolmino"] == "quarantined"
    if control_tokens == "dolma":
        assert edge["eos_only"] == {"dolmino": 1, "dolma": 1}  # the text's EOS is the document's only token
    reasons = {(d["file"], d["id"]): d["reason"] for d in result["explained"]}
    assert (EDGE_FILE, "12345") in reasons  # integer id: dolma drops the line
    assert ((EDGE_FILE, "edge-extra_ids") in reasons) == (control_tokens == "literal")
    assert len(reasons) == (2 if control_tokens == "literal" else 1)


def test_without_the_shared_corpus_the_check_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """It built dolma's venv first, then failed with a FileNotFoundError traceback (a tester)."""
    import bench.interop_dolma_tokens as interop

    monkeypatch.setattr(interop, "CORPUS", tmp_path / "shared" / "corpus")
    monkeypatch.setattr(interop, "run_check", lambda *a, **k: pytest.fail("ran the check without its corpus"))
    assert interop.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m bench.interop_dolma_tokens: error: the check reads the shared corpus, ")
    assert "which lacks academic.jsonl.zst, code.jsonl.zst" in err and err.count("\n") == 1
