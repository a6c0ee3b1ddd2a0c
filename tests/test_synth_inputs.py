"""How synth generators read their input files (dolmino.synth.inputs, and GSM8K's load_items).

Lines are judged as the build's reader (`dolmino.documents.parse_line`) judges them: a UTF-8
byte-order mark is accepted, and a lone surrogate escape is quarantined as `invalid_utf8`
instead of crashing the partition when its output is encoded. GSM8K files are read the same
way by every generator that takes `--gsm8k-jsonl` (gsm8k_train, gsm8k_numbers, mind): .zst
decompressed, a bad line quarantined with its file and file line, not the run refused.
"""

from __future__ import annotations

import json

import pytest
import zstandard

from dolmino.documents import parse_line
from dolmino.synth.base import config_hash, is_quarantine
from dolmino.synth.gsm8k_numbers import Gsm8kNumberGenerator, load_items
from dolmino.synth.gsm8k_train import Gsm8kTrainGenerator
from dolmino.synth.inputs import InputFiles, parse_row
from dolmino.synth.llm import MindGenerator
from dolmino.synth.runner import run_partition

BOM = b"\xef\xbb\xbf"
ANN = {"question": "Ann has 4 cats and 3 dogs. How many pets?", "answer": "4+3=<<4+3=7>>7\n#### 7"}
BO = {"question": "Bo has 2 pens and 5 more. How many?", "answer": "2+5=<<2+5=7>>7\n#### 7"}
LONE_SURROGATE = b'{"question": "lone \\ud800 surrogate", "answer": "#### 1"}'


def _line(row: dict) -> bytes:
    return json.dumps(row).encode()


def _quarantined(out, name="part-00000.jsonl.zst") -> list[dict]:
    data = zstandard.ZstdDecompressor().decompressobj().decompress((out / "quarantine" / name).read_bytes())
    return [json.loads(line) for line in data.splitlines()]


@pytest.mark.parametrize("raw", [
    BOM + b'{"text": "t", "id": "1"}',
    b'{"text": "lone \\ud800", "id": "1"}',
    b'{"text": "pair \\ud83d\\ude00", "id": "1"}',
    b'{"text": "\xff", "id": "1"}',
    b'{"text": NaN, "id": "1"}',
    b"[1]",
    b"[" * 100_000,
])
def test_a_line_is_judged_as_the_build_reader_judges_it(raw):
    obj, reason, _ = parse_row(raw)
    doc, build_reason, _ = parse_line(raw)
    assert reason == build_reason and (obj is None) == (doc is None)


def test_a_lone_surrogate_is_quarantined_not_a_crashed_partition(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(_line(ANN) + b"\n" + LONE_SURROGATE + b"\n")
    gen = Gsm8kTrainGenerator(str(path))
    out = tmp_path / "out"
    stats = run_partition(gen, 0, 1, 0, str(out), config_hash(gen, 1, 0))
    assert stats["kept"] == 1 and stats["quarantined"] == {"invalid_utf8": 1}
    [record] = _quarantined(out)
    assert record["path"] == str(path) and record["line"] == 2 and "surrogate" in record["detail"]


def test_a_byte_order_mark_starts_a_file_as_the_build_reader_accepts_it(tmp_path):
    plain, marked = tmp_path / "plain.jsonl", tmp_path / "marked.jsonl"
    plain.write_bytes(_line(ANN) + b"\n" + _line(BO) + b"\n")
    marked.write_bytes(BOM + plain.read_bytes())
    rows = list(InputFiles(str(marked)).rows(0, 2))
    assert [r.obj for r in rows] == [ANN, BO]
    # gsm8k_train (and tinygsm / owm_label, which read through the same InputFiles)
    docs = [r for r in Gsm8kTrainGenerator(str(marked)).generate(0, 1, 0)]
    assert not [r for r in docs if is_quarantine(r)] and len(docs) == 2
    # gsm8k_numbers and mind --gsm8k-jsonl
    assert load_items(str(marked)) == load_items(str(plain))
    assert Gsm8kNumberGenerator(num_docs=2, data_path=str(marked)).config()["num_docs"] == 2
    # A mark alone on its line is a blank line, as in the build
    only_mark = tmp_path / "only_mark.jsonl"
    only_mark.write_bytes(BOM + b"\n" + plain.read_bytes())
    assert InputFiles(str(only_mark)).total_rows == 2


def test_gsm8k_file_is_read_alike_by_every_generator_that_takes_it(tmp_path):
    """.zst decompressed; a blank line counts in line numbers; a bad line is one quarantined
    item naming its file and file line, in gsm8k_numbers and mind as in gsm8k_train."""
    raw = _line(ANN) + b"\n\n" + b'{"question": "cut' + b"\n" + LONE_SURROGATE + b"\n" + _line(BO) + b"\n"
    path = tmp_path / "train.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(raw))
    expected = [("malformed_json", 3), ("invalid_utf8", 4)]

    train = [r for r in Gsm8kTrainGenerator(str(path)).generate(0, 1, 0)]
    assert [(r["quarantined"], r["line"]) for r in train if is_quarantine(r)] == expected

    numbers = list(Gsm8kNumberGenerator(num_docs=4, data_path=str(path)).generate(0, 1, 0))
    bad = [r for r in numbers if is_quarantine(r)]
    assert [(r["quarantined"], r["line"]) for r in bad] == expected and all(r["path"] == str(path) for r in bad)
    assert bad[0]["raw"] == '{"question": "cut' and "line 1 column" in bad[0]["detail"]
    assert [r["metadata"]["gsm8k_id"] for r in numbers if not is_quarantine(r)] == ["0", "3"]

    mind = MindGenerator("http://127.0.0.1:9", "m", num_docs=4, gsm8k_path=str(path))
    contexts = list(mind.contexts(0, 4, seed=0))
    assert [(bad["quarantined"], bad["line"]) for _, _, bad in contexts if bad] == expected
    assert [ctx[0] for _, ctx, _ in contexts if ctx] == ["gsm8k-file-0", "gsm8k-file-3"]


def test_gsm8k_rows_without_question_and_answer_are_quarantined(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(_line(ANN) + b"\n" + b'{"question": 5}\n')
    records = list(Gsm8kNumberGenerator(num_docs=4, data_path=str(path)).generate(0, 1, 0))
    assert [r.get("quarantined") for r in records] == [None, "missing_fields", None, "missing_fields"]
    assert records[1]["path"] == str(path) and records[1]["line"] == 2 == records[3]["line"]


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".jsonl.gz"])
def test_a_truncated_compressed_input_is_one_corrupt_stream_item(tmp_path, suffix):
    """A cut .zst / .gz input stopped the run with a TruncatedStreamError traceback (found by a
    tester); the build keeps the rows before the break and quarantines the rest as one
    `corrupt_stream` record, and so does a generator reading it: attempted stays balanced."""
    import gzip

    from dolmino.documents import Quarantine, read_documents
    from dolmino.synth.tinygsm import TinyGsmGenerator

    rows = [json.dumps({"question": f"Sam has {n} apples. How many?", "text": "t", "id": str(n),
                        "code": f"def f():\n    x = {n}\n    return x\n"}).encode() for n in range(200)]
    data = b"\n".join(rows) + b"\n"
    # zstd: one frame per 50 rows, so that frames before the cut decode (one small frame yields nothing)
    whole = gzip.compress(data) if suffix == ".jsonl.gz" else b"".join(
        zstandard.ZstdCompressor().compress(b"".join(row + b"\n" for row in rows[k:k + 50])) for k in range(0, 200, 50))
    path = tmp_path / f"tinygsm{suffix}"
    path.write_bytes(whole[:len(whole) * 2 // 3])
    build = Quarantine()
    docs = len(list(read_documents(str(path), build)))
    assert dict(build.counts) == {"corrupt_stream": 1} and 0 < docs < 200
    gen = TinyGsmGenerator(str(path))
    assert gen.num_docs == docs + 1
    records = [r for p in range(3) for r in gen.generate(p, 3, seed=1)]
    assert len(records) == docs + 1 and len([r for r in records if not is_quarantine(r)]) == docs
    cut = records[-1]
    assert cut["quarantined"] == "corrupt_stream" and cut["path"] == str(path) and "truncated" in cut["detail"]
    assert cut["line"] == build.records[0].line


def test_a_gsm8k_file_spelled_otherwise_is_the_same_configuration(tmp_path, monkeypatch):
    """`--gsm8k-jsonl train.jsonl` and `--gsm8k-jsonl $PWD/train.jsonl` (or a run from another
    directory) hashed two configurations: the rerun of a killed mind job was refused, "another
    configuration" with the same generator, seed and partitions (found by a tester). The file is
    named by its name and content; a done-file hashed with the path as typed still resumes."""
    from dolmino.synth.base import accepted_hashes

    path = tmp_path / "train.jsonl"
    path.write_bytes(_line(ANN) + b"\n" + _line(BO) + b"\n")
    monkeypatch.chdir(tmp_path)
    for make in (lambda p: Gsm8kNumberGenerator(num_docs=4, data_path=p),
                 lambda p: MindGenerator("http://127.0.0.1:9", "m", num_docs=4, gsm8k_path=p)):
        relative, absolute = make("train.jsonl"), make(str(path))
        assert config_hash(relative, 2, 1) == config_hash(absolute, 2, 1)
        older = absolute.config()
        if "data" in older:
            older["data"] = str(path)
        else:
            older["input"] = {**older["input"], "gsm8k": str(path)}
        assert config_hash(absolute, 2, 1, older) in accepted_hashes(absolute, 2, 1)
