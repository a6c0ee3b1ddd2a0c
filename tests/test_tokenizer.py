"""Dolma2Tokenizer: `encode_documents` under each semantics and control-token policy, the raw
`encode_batch` unchanged, and the thread setting the Rust library really honours.

Expected ids are written from the rules (docs/DESIGN.md "Tokenization") and the raw
tokenizer, never from `encode_documents` itself; bench/interop_dolma_tokens.py (and
tests/test_interop_dolma_tokens.py) check the same rules against the real `dolma tokens`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dolmino.tokenizer as tokmod
from dolmino.errors import ManifestError
from dolmino.manifest import TokenizerSpec
from dolmino.tokenizer import Dolma2Tokenizer, EncodedDocuments, configure_threads
from tests.conftest import REPO, shared_corpus_file

EOS, PAD, EMAIL = 100257, 100277, 100262
CONTROL_IDS = {100256, *range(100257, 100261), *range(100264, 100278)}  # every added token but PII
PII_IDS = {100261, 100262, 100263}


@functools.lru_cache(maxsize=None)
def _make(items: tuple) -> Dolma2Tokenizer:
    return Dolma2Tokenizer.from_spec(dataclasses.replace(TokenizerSpec(), **dict(items)))


def make(**kw) -> Dolma2Tokenizer:
    """One tokenizer per policy for the whole module (building one parses 7 MB of JSON)."""
    return _make(tuple(sorted(kw.items())))


@pytest.fixture(scope="module")
def dolma() -> Dolma2Tokenizer:
    return make()


@pytest.fixture(scope="module")
def raw_tok():
    from tokenizers import Tokenizer

    from dolmino.assets import dolma2_tokenizer_path

    return Tokenizer.from_file(str(dolma2_tokenizer_path()))


def plain(raw_tok, text: str) -> list[int]:
    return raw_tok.encode(text, add_special_tokens=False).ids


@pytest.fixture(scope="module")
def corpus_texts() -> list[str]:
    from dolmino.documents import Quarantine, read_documents

    texts = []
    for name in ("web.jsonl.zst", "code.jsonl.zst", "encyclopedic.jsonl.zst", "academic.jsonl.zst"):
        for k, (_, doc) in enumerate(read_documents(str(shared_corpus_file(name)), Quarantine())):
            if k >= 30:
                break
            texts.append(doc["text"][:20_000])  # real text; the length cap keeps the test fast
    return texts


def as_lists(encoded: EncodedDocuments) -> list[list[int] | None]:
    return [None if a is None else a.tolist() for a in encoded.ids]


def test_dolma_semantics_strip_skip_and_eos_rule(dolma, raw_tok):
    texts = ["\n\n  Hello world.  \n\n", "", "   ", " \n\t\r\n", "\u3000\xa0\x1f\x85", "a<|endoftext|>",
             "<|endoftext|>", "x<|endoftext|><|endoftext|>\n", "hello <|endoftext|> world", "\u200b"]
    out = dolma.encode_documents(texts)
    assert out.skipped_empty == 4 and out.control_token_docs == 4 and out.eos_in_span_docs == 2
    assert as_lists(out) == [
        plain(raw_tok, "Hello world.") + [EOS],
        None, None, None, None,
        [plain(raw_tok, "a")[0], EOS],             # ends in EOS already: no second one
        [EOS],                                      # the text's EOS is the document's EOS
        plain(raw_tok, "x") + [EOS, EOS],           # stripped "\n" first, then nothing appended
        plain(raw_tok, "hello ") + [EOS] + plain(raw_tok, " world") + [EOS],
        plain(raw_tok, "\u200b") + [EOS],           # not whitespace to str.strip()
    ]
    assert all(a.dtype == np.uint32 for a in out.ids if a is not None)


def test_raw_semantics_is_text_as_is_with_eos_always(raw_tok):
    tok = make(semantics="raw")
    out = tok.encode_documents(["\n\n  Hello  \n\n", "", "a<|endoftext|>"])
    assert as_lists(out) == [plain(raw_tok, "\n\n  Hello  \n\n") + [EOS], [EOS], [plain(raw_tok, "a")[0], EOS, EOS]]
    assert out.skipped_empty == 0 and out.control_token_docs == 1 and out.eos_in_span_docs == 1


def test_literal_control_tokens_are_text_and_placeholders_stay_special(dolma, raw_tok):
    tok = make(control_tokens="literal")
    text = "x |||EMAIL_ADDRESS||| <|endoftext|> <|pad|> <|extra_id_1|> <|im_start|>y<|endoftext|>"
    (ids,), skipped, control, inside = tok.encode_documents([text])
    assert (skipped, control, inside) == (0, 1, 0)
    body = ids[:-1].tolist()
    assert ids[-1] == EOS and not CONTROL_IDS & set(body) and body.count(EMAIL) == 1
    assert tok.decode(body) == text  # every control token survives as its characters
    # the default policy matches the same strings as tokens
    (dolma_ids,), *_ = dolma.encode_documents([text])
    assert {EOS, PAD, 100266, 100264, EMAIL} <= set(dolma_ids[:-1].tolist())
    assert dolma_ids[-1] == EOS and (dolma_ids[:-1] == EOS).sum() == 1  # the text's final EOS ends it
    # encode_batch (filters, trainer) is untouched by either policy
    assert tok.encode_batch([text])[0].tolist() == plain(raw_tok, text)


def test_corpus_matches_rules_across_batches_with_skips(monkeypatch, dolma, raw_tok, corpus_texts):
    monkeypatch.setattr(tokmod, "ENCODE_BATCH", 7)  # many batches, skips falling inside them
    texts = []
    for k, t in enumerate(corpus_texts):
        texts.append(("  \n" + t + "\n\n") if k % 3 == 0 else t)
        if k % 11 == 5:
            texts.append(" \n ")
    out = dolma.encode_documents(texts)
    expected = [None if not t.strip() else plain(raw_tok, t.strip()) for t in texts]
    expected = [None if e is None else (e if e[-1] == EOS else e + [EOS]) for e in expected]
    assert as_lists(out) == expected
    assert out.skipped_empty == sum(e is None for e in expected) > 0
    raw_out = make(semantics="raw").encode_documents(texts)
    assert as_lists(raw_out) == [plain(raw_tok, t) + [EOS] for t in texts]


def test_control_token_count_agrees_with_the_ids(dolma, corpus_texts):
    """Text detection (one `in` test, then a regex) flags exactly the documents whose ids
    hold a control token; PII placeholders alone are not control tokens."""
    extra = ["a <|pad|>", "<|fim_suffix|>", "|||PHONE_NUMBER||| only", "<|extra_id_10|>", "<|endoftext",
             "< |pad|>", "<|im_end|>z", "plain", "<|endofprompt|>"]
    texts = corpus_texts + extra
    out = dolma.encode_documents(texts)
    by_ids = sum(bool(CONTROL_IDS & set(a[:-1].tolist()) or (a[-1] == EOS and texts[i].strip().endswith(
        "<|endoftext|>"))) for i, a in enumerate(out.ids))
    assert out.control_token_docs == by_ids
    assert dolma.encode_documents(extra).control_token_docs == 5
    assert make(control_tokens="literal").encode_documents(texts).control_token_docs == by_ids


def test_bos_rule(raw_tok):
    bos = 100256
    out = make(bos_token_id=bos).encode_documents([" hi ", "<|extra_id_0|>hi"])
    assert as_lists(out) == [[bos] + plain(raw_tok, "hi") + [EOS], [bos] + plain(raw_tok, "hi") + [EOS]]
    raw = make(semantics="raw", bos_token_id=bos).encode_documents(["<|extra_id_0|>hi"])
    assert as_lists(raw) == [[bos, bos] + plain(raw_tok, "hi") + [EOS]]


def test_pickle_keeps_the_policy_and_rebuilds_lazily():
    tok = make(control_tokens="literal", semantics="raw", bos_token_id=5)
    tok.encode_documents(["warm <|pad|>"])
    copy = pickle.loads(pickle.dumps(tok))
    assert tok._doc_tok is not None  # the original keeps its built tokenizers
    assert copy._tok is None and copy._doc_tok is None
    assert (copy.semantics, copy.control_tokens, copy.bos_token_id) == ("raw", "literal", 5)
    assert as_lists(copy.encode_documents(["<|pad|> x "])) == as_lists(tok.encode_documents(["<|pad|> x "]))


def test_a_process_builds_each_tokenizer_once(monkeypatch):
    """Every phase of a build broadcasts its own copy; a worker builds from the JSON once."""
    import hashlib

    monkeypatch.setattr(tokmod, "_BUILT", {})
    built = []
    real_build = Dolma2Tokenizer._build
    monkeypatch.setattr(Dolma2Tokenizer, "_build", lambda self, text: built.append(1) or real_build(self, text))
    blob = pickle.dumps(make())
    first, second = pickle.loads(blob), pickle.loads(blob)
    assert first.__getstate__()["_json_digest"] == hashlib.sha256(first.json_text.encode("utf-8")).hexdigest()
    texts = [" a <|endoftext|> b ", "plain text", "   "]
    expected = as_lists(first.encode_documents(texts))
    assert as_lists(second.encode_documents(texts)) == expected and len(built) == 1
    assert second.backend is first.backend and second.document_backend is first.document_backend
    # Another control-token policy of the same JSON shares the raw tokenizer, not the document one.
    literal = pickle.loads(pickle.dumps(make(control_tokens="literal")))
    assert as_lists(literal.encode_documents(texts)) != expected and len(built) == 2
    assert literal.backend is first.backend and literal.document_backend is not first.document_backend
    # A remembered tokenizer is still checked against each instance's declared vocabulary.
    with pytest.raises(ValueError, match="manifest says vocab_size 1000"):
        Dolma2Tokenizer(first.json_text, vocab_size=1000).encode_batch(["x"])
    assert len(built) == 2


def test_tokenizer_json_reads_an_s3_object(s3_server):
    """A manifest may name its tokenizer by an s3:// URI (issue 10: no shared filesystem)."""
    import uuid

    from dolmino import s3
    from dolmino.assets import dolma2_tokenizer_path

    packaged = tokmod.tokenizer_json(TokenizerSpec())
    bucket = f"tok-{uuid.uuid4().hex[:16]}"
    s3.client().create_bucket(Bucket=bucket)
    s3.client().put_object(Bucket=bucket, Key="tok/tokenizer.json", Body=dolma2_tokenizer_path().read_bytes())
    assert tokmod.tokenizer_json(TokenizerSpec(path=f"s3://{bucket}/tok/tokenizer.json")) == packaged
    with pytest.raises(ManifestError, match=f"tokenizer.path: s3://{bucket}/tok/missing.json"):
        tokmod.tokenizer_json(TokenizerSpec(path=f"s3://{bucket}/tok/missing.json"))


def test_an_unreadable_tokenizer_path_is_one_line_naming_it(tmp_path):
    """Found by a tester: a tokenizer.json that is not JSON was a JSONDecodeError traceback
    naming no tokenizer; a missing file named no tokenizer either."""
    bad = tmp_path / "tok.json"
    bad.write_text("{not json")
    with pytest.raises(ManifestError, match=f"tokenizer.path {bad}: not JSON \\(line 1: "):
        tokmod.tokenizer_json(TokenizerSpec(path=str(bad)))
    bad.write_text("[1, 2]")
    with pytest.raises(ManifestError, match="a JSON list, not a tokenizer definition"):
        tokmod.tokenizer_json(TokenizerSpec(path=str(bad)))
    with pytest.raises(ManifestError, match="tokenizer.path: .*missing.json"):
        tokmod.tokenizer_json(TokenizerSpec(path=str(tmp_path / "missing.json")))


def test_constructor_rejects_unknown_policies():
    with pytest.raises(ValueError, match="semantics must be one of"):
        Dolma2Tokenizer("{}", semantics="dolmaa")
    with pytest.raises(ValueError, match="control_tokens must be one of"):
        Dolma2Tokenizer("{}", control_tokens="text")


def test_configure_threads_validates(monkeypatch):
    monkeypatch.setattr(tokmod, "_applied_threads", None)
    monkeypatch.setenv("DOLMINO_TOKENIZER_THREADS", "many")
    with pytest.raises(ValueError, match="DOLMINO_TOKENIZER_THREADS must be a positive integer"):
        configure_threads()
    for bad in (0, -2, True, 1.5):
        with pytest.raises(ValueError, match="positive integer"):
            configure_threads(bad)
    monkeypatch.delenv("DOLMINO_TOKENIZER_THREADS")
    assert configure_threads() is None


THREAD_PROBE = textwrap.dedent("""
    import json, os, sys
    from dolmino.tokenizer import Dolma2Tokenizer
    from dolmino.manifest import TokenizerSpec
    threads = None if sys.argv[1] == "none" else int(sys.argv[1])
    tok = Dolma2Tokenizer.from_spec(TokenizerSpec(), threads=threads)
    tok.document_backend  # builds the tokenizer; rayon's pool starts with the first batch, even of one
    before = len(os.listdir("/proc/self/task"))
    tok.encode_documents(["some text to tokenize, number %d" % i for i in range(2000)])
    after = len(os.listdir("/proc/self/task"))
    print(json.dumps({"extra": after - before, "parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
                      "rayon": os.environ.get("RAYON_NUM_THREADS")}))
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through Linux /proc")
@pytest.mark.parametrize("threads, env, extra", [("1", None, 0), ("3", None, 3), ("none", "3", 3), ("none", "1", 0),
                                                 ("none", None, None)])
def test_thread_count_is_what_the_process_gets(threads, env, extra):
    """threads=1 runs batches on the calling thread (no rayon pool at all); n > 1 builds a
    pool of exactly n threads; DOLMINO_TOKENIZER_THREADS does the same when no argument is
    given; with neither, the library's default is a pool of one thread per usable CPU."""
    environ = {k: v for k, v in os.environ.items() if k not in ("RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM",
                                                                 "DOLMINO_TOKENIZER_THREADS")}
    environ["PYTHONPATH"] = str(REPO)
    if env:
        environ["DOLMINO_TOKENIZER_THREADS"] = env
    proc = subprocess.run([sys.executable, "-c", THREAD_PROBE, threads], capture_output=True, text=True,
                          env=environ, timeout=120)
    assert proc.returncode == 0, proc.stderr
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    if extra is None:
        assert probe == {"extra": len(os.sched_getaffinity(0)), "parallelism": None, "rayon": None}
        return
    assert probe["extra"] == extra, probe
    assert probe["parallelism"] == ("false" if extra == 0 else "true")
    assert probe["rayon"] == (None if extra == 0 else str(extra))
