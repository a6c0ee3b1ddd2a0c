"""`dolmino validate`: a clean build passes; each kind of damage is caught and named.

The build is written with the real MemmapPartWriter from dolma2 ids of shared-corpus text,
then damaged one way per test (truncated file, id >= vocab, missing EOS, sidecar gap /
overlap / short coverage / garbage, label mask of the wrong length, .npy header, orphan
files), and every check runs with both the native scan and the numpy fallback.
"""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest

import csrc
from dolmino.memmap import MemmapPartWriter
from dolmino.validate import main, validate_build
from tests.conftest import shared_corpus_file

EOS = 100257
BACKENDS = ["fallback"] + (["native"] if csrc.native_available() else [])


@pytest.fixture(scope="module")
def docs() -> list[np.ndarray]:
    from tokenizers import Tokenizer

    from dolmino.assets import dolma2_tokenizer_path
    from dolmino.documents import Quarantine, read_documents

    tok = Tokenizer.from_file(str(dolma2_tokenizer_path()))
    texts = []
    for name in ("encyclopedic.jsonl.zst", "code.jsonl.zst"):
        for k, (_, doc) in enumerate(read_documents(str(shared_corpus_file(name)), Quarantine())):
            if k >= 40:
                break
            texts.append(doc["text"])
    return [np.asarray(e.ids, dtype=np.uint32) for e in tok.encode_batch(texts, add_special_tokens=False)]


@pytest.fixture(scope="module")
def clean_build(tmp_path_factory, docs):
    out = tmp_path_factory.mktemp("build")
    for index, (lo, hi, mask) in enumerate(((0, 50, True), (50, 80, False))):
        writer = MemmapPartWriter(str(out), index, EOS, label_mask=mask)
        for k in range(lo, hi):
            writer.add(docs[k], f"doc-{k}", "wiki" if k < 40 else "code", f"corpus:{k}")
        writer.close()
    (out / "manifest.json").write_text(json.dumps({"tokenizer": {"vocab_size": 100278, "eos_token_id": EOS}}))
    return out


@pytest.fixture
def build(clean_build, tmp_path):
    dest = tmp_path / "build"
    shutil.copytree(clean_build, dest)
    return dest


def _run(path, capsys, backend, *extra) -> tuple[int, str]:
    code = main([str(path), "--backend", backend, *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def _rewrite_sidecar(path, rows):
    with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
        fh.write("".join(",".join(str(x) for x in r) + "\n" for r in rows))


def _sidecar_rows(path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [line.rstrip("\n").split(",") for line in fh]


@pytest.mark.parametrize("backend", BACKENDS)
def test_clean_build_passes(build, capsys, backend):
    code, out = _run(build, capsys, backend)
    assert code == 0, out
    assert "2 part(s) OK" in out and "80 documents" in out and "< vocab_size 100278" in out
    result = validate_build(build, backend=backend)
    assert result.ok and [p.docs for p in result.parts] == [50, 30]
    assert sum(p.tokens for p in result.parts) == sum(
        len(np.fromfile(p, dtype="<u4")) for p in build.glob("part-*[0-9].npy"))
    assert all(p.eos >= p.docs for p in result.parts)


def test_cli_entry_point(build, capsys):
    from dolmino.cli import main as cli_main

    assert cli_main(["validate", str(build)]) == 0
    assert "part(s) OK" in capsys.readouterr().out


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_token_file(build, capsys, backend):
    part = build / "part-00001.npy"
    part.write_bytes(part.read_bytes()[:-2])
    code, out = _run(build, capsys, backend)
    assert code == 1
    assert f"{part}: " in out and "not a whole number of 4-byte uint32 tokens (2 stray byte(s))" in out
    assert "INVALID: 1 problem(s) in 1 of 2 part(s)" in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unreadable_part_is_not_called_an_empty_file(tmp_path, capsys, backend):
    """A build's only part cut to 5 bytes, or given a .npy header, holds tokens that cannot be read: it was
    also warned about as "holds no tokens (its parts are empty files)" (found by a tester)."""
    writer = MemmapPartWriter(str(tmp_path), 0, EOS)
    writer.add(np.arange(3, dtype=np.uint32), "doc-0", "wiki", "corpus:0")
    writer.close()
    part = tmp_path / "part-00000.npy"
    whole = part.read_bytes()
    for damaged, problem in ((whole[:5], "not a whole number of 4-byte uint32 tokens"), (b"\x93NUMPY" + whole[6:],
                                                                                          "has a .npy header")):
        part.write_bytes(damaged)
        code, out = _run(tmp_path, capsys, backend)
        assert code == 1 and problem in out
        assert "holds no tokens" not in out and "empty files" not in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_id_out_of_vocabulary(build, capsys, backend):
    part = build / "part-00000.npy"
    tokens = np.fromfile(part, dtype="<u4")
    tokens[[5, 9]] = [100278, 2**32 - 1]
    tokens.tofile(part)
    code, out = _run(build, capsys, backend)
    assert code == 1
    assert "2 token id(s) >= vocab_size 100278 (first: 100278 at offset 5; max id 4294967295)" in out


def test_vocab_comes_from_manifest_and_flag(build, capsys, docs):
    biggest = max(int(d.max()) for d in docs)
    (build / "manifest.json").write_text(json.dumps({"tokenizer": {"vocab_size": biggest, "eos_token_id": EOS}}))
    code, out = _run(build, capsys, "auto")
    assert code == 1 and f">= vocab_size {biggest}" in out
    code, out = _run(build, capsys, "auto", "--vocab-size", "100278")
    assert code == 0, out
    (build / "manifest.json").write_text("{not json")
    code, out = _run(build, capsys, "auto")
    assert code == 1 and "cannot read the build's manifest" in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_eos(build, capsys, backend):
    part = build / "part-00001.npy"
    rows = _sidecar_rows(build / "part-00001.csv.gz")
    tokens = np.fromfile(part, dtype="<u4")
    end3 = int(rows[3][1])
    tokens[end3 - 1] = 11
    tokens.tofile(part)
    code, out = _run(build, capsys, backend)
    assert code == 1
    assert f"not ending in EOS {EOS}: sidecar rows 3 (row 3: token 11 at offset {end3 - 1})" in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_sidecar_gap_overlap_and_coverage(build, capsys, backend):
    sidecar = build / "part-00000.csv.gz"
    rows = _sidecar_rows(sidecar)
    gap = [list(r) for r in rows]
    gap[4][0] = str(int(gap[4][0]) + 1)
    _rewrite_sidecar(sidecar, gap)
    code, out = _run(build, capsys, backend)
    assert code == 1 and "not contiguous at 1 place(s) (rows 4; row 4 starts at" in out and "leaves a gap" in out

    overlap = [list(r) for r in rows]
    overlap[7][0] = str(int(overlap[7][0]) - 2)
    _rewrite_sidecar(sidecar, overlap)
    code, out = _run(build, capsys, backend)
    assert code == 1 and "overlaps the previous row's end" in out

    n_tokens = (build / "part-00000.npy").stat().st_size // 4
    _rewrite_sidecar(sidecar, rows[:-1])
    code, out = _run(build, capsys, backend)
    assert code == 1 and f"but the token file holds {n_tokens} tokens" in out

    empty_row = [list(r) for r in rows]
    empty_row[0][1] = "0"
    _rewrite_sidecar(sidecar, empty_row)
    code, out = _run(build, capsys, backend)
    assert code == 1 and "with end <= start (rows 0)" in out


@pytest.mark.parametrize("garbage, message", [
    (b"not gzip at all", "not a readable gzip file"),
    (gzip.compress(b"0,10,a,b\n"), "is not `start,end,id,src,loc` CSV"),
    (gzip.compress(b"zero,10,a,b,c\n"), "is not `start,end,id,src,loc` CSV"),
    # its deflate stream damaged inside (bit rot in a copy): zlib.error, a traceback (found by a tester)
    (gzip.compress(b"0,10,a,b,c\n", mtime=0)[:10] + b"\xff" * 20,
     "not a readable gzip file (Error -3 while decompressing data: invalid block type)"),
])
def test_malformed_sidecar(build, capsys, garbage, message):
    (build / "part-00001.csv.gz").write_bytes(garbage)
    code, out = _run(build, capsys, "auto")
    assert code == 1 and "part-00001.csv.gz" in out and message in out
    assert "Traceback" not in out


def _without_read_override() -> list[str]:
    """A command prefix under which a file of mode 000 cannot be read: none for a user, root's
    CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH dropped (setpriv) for root."""
    import os

    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root without setpriv cannot be denied a read")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


@pytest.mark.parametrize("name", ["part-00000.npy", "part-00000.csv.gz", "part-00000.label_mask.npy"])
@pytest.mark.parametrize("checksums", [[], ["--no-checksums"]])
def test_a_file_without_read_permission_is_one_line(build, name, checksums):
    """A build copied with its files' modes lost (mode 000 for one part): validate ended in a
    PermissionError traceback from its hashing thread, or from the token check with --no-checksums
    (found by a tester). One line naming the file, exit 1."""
    import hashlib
    import subprocess
    import sys

    listed = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in build.glob("part-*")}
    (build / "report.json").write_text(json.dumps({"output": {"tokens": sum(
        p.stat().st_size // 4 for p in build.glob("part-*[0-9].npy")), "files_sha256": listed}}))
    assert not validate_build(build).all_errors()
    (build / name).chmod(0)
    done = subprocess.run([*_without_read_override(), sys.executable, "-m", "dolmino.validate", str(build), *checksums],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert lines[-1] == f"{build}: INVALID: 1 problem(s) in 1 of 2 part(s)", lines
    assert len(lines) == 2 and lines[0].startswith(f"{build}/part-00000") and name in lines[0], lines
    assert "Permission denied" in lines[0], lines


def test_missing_sidecar_and_orphans(build, capsys):
    (build / "part-00001.csv.gz").rename(build / "part-00009.csv.gz")
    code, out = _run(build, capsys, "auto")
    assert code == 1
    assert "sidecar part-00001.csv.gz is missing" in out
    assert "part-00009.csv.gz: has no token file part-00009.npy beside it" in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_label_mask_checks(build, capsys, backend):
    mask = build / "part-00000.label_mask.npy"
    good = mask.read_bytes()
    mask.write_bytes(good[:-1])
    code, out = _run(build, capsys, backend)
    assert code == 1 and f"has {len(good) - 1} entries but the token file holds {len(good)} tokens" in out
    mask.write_bytes(good[:-1] + b"\x07")
    code, out = _run(build, capsys, backend)
    assert code == 1 and "bytes other than 0/1" in out


def test_npy_header_and_empty_dir(build, tmp_path, capsys):
    part = build / "part-00001.npy"
    np.save(part, np.fromfile(part, dtype="<u4"))
    code, out = _run(build, capsys, "auto")
    assert code == 1 and "has a .npy header" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = _run(empty, capsys, "auto")
    assert code == 1 and "no token files (*.npy) found" in out
    code, out = _run(tmp_path / "absent", capsys, "auto")
    assert code == 1 and f"{tmp_path / 'absent'}: no such directory\n" in out
    (tmp_path / "file").write_text("{}")
    code, out = _run(tmp_path / "file", capsys, "auto")
    assert code == 1 and f"{tmp_path / 'file'}: a file, not a directory\n" in out


def test_empty_part_is_valid(tmp_path, capsys):
    """Valid as memmaps, but a build of nothing: "1 part(s) OK, 0 tokens" alone read as one to train on
    (a tester); a warning says it holds no tokens."""
    MemmapPartWriter(str(tmp_path), 0, EOS).close()
    code, out = _run(tmp_path, capsys, "auto")
    assert code == 0 and "1 part(s) OK, 0 tokens, 0 documents" in out
    assert "holds no tokens (its parts are empty files): nothing to train on" in capsys.readouterr().err + out


def test_backend_native_under_dolmino_native_0_says_unset_it(build, capsys, monkeypatch):
    """`DOLMINO_NATIVE=0 dolmino validate --backend native` told the user to reinstall an extension
    that was only switched off, and named the API's backend='fallback', not the flag (a tester)."""
    monkeypatch.setattr(csrc, "_NATIVE", None)
    monkeypatch.setattr(csrc, "_NATIVE_ERROR", "disabled by DOLMINO_NATIVE=0")
    code, out = _run(build, capsys, "native")
    assert code == 2 and "unset DOLMINO_NATIVE" in out and "--backend fallback" in out
    assert "reinstall" not in out


# --- EOS inside a document's span --------------------------------------------------------

def _set_tokens(part, offsets, value):
    tokens = np.fromfile(part, dtype="<u4")
    tokens[list(offsets)] = value
    tokens.tofile(part)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eos_inside_span_warns_then_fails_under_strict(build, capsys, backend):
    part = build / "part-00000.npy"
    rows = [(int(r[0]), int(r[1])) for r in _sidecar_rows(build / "part-00000.csv.gz")]
    # row 2: one EOS in the middle; row 7: two, one of them its first token; row 9: none added
    _set_tokens(part, [rows[2][0] + 3, rows[7][0], rows[7][0] + 5], EOS)
    code, out = _run(build, capsys, backend)
    assert code == 0, out
    assert (f"warning: {part}: 2 document(s) hold EOS {EOS} before their last token (sidecar rows 2, 7; "
            f"row 2: EOS at offset {rows[2][0] + 3}, the row ends at {rows[2][1]})") in out
    assert "WARNING: 2 document(s) hold EOS inside their span" in out and "2 part(s) OK" in out
    result = validate_build(build, backend=backend)
    assert result.ok and result.eos_inside_docs == 2 and [p.eos_inside_docs for p in result.parts] == [2, 0]
    code, out = _run(build, capsys, backend, "--strict")
    assert code == 1 and "INVALID: 1 problem(s) in 1 of 2 part(s)" in out
    assert f"{part}: 2 document(s) hold EOS" in out and f"warning: {part}" not in out
    assert not validate_build(build, backend=backend, strict=True).ok


def test_clean_build_reports_no_eos_inside(build, capsys):
    code, out = _run(build, capsys, "auto")
    assert code == 0 and "no EOS inside a document" in out and "warning: " + str(build / "part-") not in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_eos_inside_found_when_counts_balance(build, capsys, backend):
    """A row that lost its final EOS while another row gained one inside: the EOS count still
    equals the row count, so the fast path must not be taken."""
    part = build / "part-00001.npy"
    rows = [(int(r[0]), int(r[1])) for r in _sidecar_rows(build / "part-00001.csv.gz")]
    _set_tokens(part, [rows[4][1] - 1], 11)
    _set_tokens(part, [rows[6][0] + 1], EOS)
    result = validate_build(build, backend=backend)
    assert result.parts[1].eos == result.parts[1].docs
    assert result.parts[1].eos_inside_docs == 1
    assert any("not ending in EOS" in e for e in result.all_errors())
    assert any("1 document(s) hold EOS" in w for w in result.all_warnings())


def test_eos_inside_rows_matches_a_plain_loop(monkeypatch):
    from dolmino.validate import eos_inside_rows

    monkeypatch.setattr(csrc, "SCAN_CHUNK", 64)  # many chunks, rows crossing chunk edges
    rng = np.random.default_rng(3)
    for _ in range(20):
        lengths = rng.integers(1, 40, size=rng.integers(1, 60))
        ends = np.cumsum(lengths)
        tokens = rng.integers(0, 6, size=int(ends[-1])).astype(np.uint32)
        tokens[ends - 1] = 5
        expected = [k for k, (lo, hi) in enumerate(zip(np.r_[0, ends[:-1]], ends)) if (tokens[lo:hi - 1] == 5).any()]
        assert eos_inside_rows(tokens, ends, 5).tolist() == expected
    assert eos_inside_rows(np.zeros(0, np.uint32), np.zeros(0, np.int64), 5).tolist() == []


def test_validate_counts_what_encode_documents_reports(tmp_path, capsys):
    """Ids from encode_documents written as a part: validate's count of documents with EOS
    inside equals the tokenizer's eos_in_span_docs (the build report's figure)."""
    from dolmino.manifest import TokenizerSpec
    from dolmino.tokenizer import Dolma2Tokenizer

    texts = ["plain text", "a <|endoftext|> b", "ends in EOS<|endoftext|>", "  ", "<|endoftext|>",
             "<|endoftext|>x<|endoftext|>y", "pad <|pad|> only"]
    encoded = Dolma2Tokenizer.from_spec(TokenizerSpec()).encode_documents(texts)
    docs = [a for a in encoded.ids if a is not None]
    np.concatenate(docs).astype("<u4").tofile(tmp_path / "part-00000.npy")
    ends = np.cumsum([len(a) for a in docs])
    _rewrite_sidecar(tmp_path / "part-00000.csv.gz",
                     [(int(e - len(a)), int(e), f"d{k}", "src", f"f:{k}") for k, (a, e) in enumerate(zip(docs, ends))])
    result = validate_build(tmp_path)
    assert result.ok and encoded.eos_in_span_docs == result.eos_inside_docs == 2


def test_incomplete_and_stale_builds_are_refused(tmp_path, capsys):
    """No report.json beside a build's commit records: interrupted; a part the report does not
    list: stale; a listed part that is gone: missing."""
    import json

    from dolmino.validate import validate_build

    out = tmp_path / "b"
    out.mkdir()
    writer = MemmapPartWriter(str(out), 0, EOS)
    writer.add(np.arange(5, dtype=np.uint32), "d", "s", "s:1")
    writer.close()
    assert validate_build(out).ok  # plain memmaps, not a dolmino build: checked as they are
    (out / "_parts").mkdir()
    result = validate_build(out)
    assert not result.ok and "incomplete build" in result.all_errors()[0]
    assert main([str(out)]) == 1  # the build as a whole, not "in 0 of 1 part(s)" (found by a tester)
    assert f"{out}: INVALID: 1 problem(s) with the build as a whole" in capsys.readouterr().err
    import hashlib

    (out / "report.json").write_text(json.dumps({"output": {"tokens": 6, "files_sha256": {
        name: hashlib.sha256((out / name).read_bytes()).hexdigest()
        for name in ("part-00000.npy", "part-00000.csv.gz")}}}))
    assert validate_build(out).ok
    (out / "part-00001.npy").write_bytes(b"")
    errors = validate_build(out).all_errors()
    assert any("part-00001.npy: not written by the build" in e for e in errors)
    (out / "part-00001.npy").unlink()
    (out / "part-00000.csv.gz").unlink()
    assert any("part-00000.csv.gz: listed in report.json but missing" in e for e in validate_build(out).all_errors())


def test_a_build_stopped_before_its_plan_is_incomplete_not_empty(tmp_path, capsys):
    """A build stopped in its pool or tokenize stage leaves only _owner.json in --out: validate
    said "no token files (*.npy) found" (found by a tester with Ctrl-C; on s3:// it said incomplete)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "_owner.json").write_text(json.dumps({"token": "t", "host": "h", "pid": 1, "started": "2026-01-01T00:00Z"}))
    assert main([str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{out}: incomplete build: no report.json, which a build writes last (it was interrupted or "
                          "is still running; rerun the same build command to finish it)\n"), err


def test_a_pulled_release_without_its_report_json_is_told_to_pull_again(build, capsys):
    """A pulled release whose report.json was removed since the pull was "incomplete build ... rerun the same build
    command to finish it", on a machine that only pulled the release (found by a tester)."""
    (build / "_plan.json").write_text("{}")  # a build's files, report.json left out
    (build / "RELEASE.json").write_text("{}")  # what `dolmino release pull` leaves beside them
    assert main([str(build)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{build}: a pulled release (RELEASE.json) without its report.json, which the release "
                          "holds: removed since the pull; remove the directory and pull the release again\n"), err


def test_parts_without_report_json_validate_with_a_warning(build, capsys):
    """Parts copied without their report.json validated OK unsaid, while the trainer warns that
    nothing checks every part is there (found by a tester: a copy missing its last part passed)."""
    (build / "part-00001.npy").unlink()
    (build / "part-00001.csv.gz").unlink()
    code, out = _run(build, capsys, "auto")
    assert code == 0 and "1 part(s) OK" in out
    assert (f"warning: {build}: holds dolmino part files but no report.json: nothing checks that every part of the "
            "build is here, nor that they are the ones it wrote; copy the whole build directory (or `dolmino release "
            "pull` it)") in out


def test_a_build_on_s3_is_refused_with_how_to_copy_it(s3_server, capsys):
    """A finished build (its report.json) on S3: validate says how to copy it. On the S3 server, not
    wherever the session's environment points: a missing bucket is said as such (found by the CI)."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="finished-validate")
    boto3.client("s3").put_object(Bucket="finished-validate", Key="mixes/dolmino-50B/report.json", Body=b"{}")
    assert main(["s3://finished-validate/mixes/dolmino-50B/"]) == 2
    err = capsys.readouterr().err
    assert "s3://finished-validate/mixes/dolmino-50B: validation reads every token, from a local directory" in err
    assert "dolmino release publish s3://finished-validate/mixes/dolmino-50B s3://" in err, err
    assert "dolmino release pull" in err


def test_an_unfinished_build_on_s3_is_said_to_be_one(s3_server, capsys):
    """A build killed before report.json: validate (and the trainer) suggested publishing it,
    which publish then refused as not finished. They now say it is incomplete, and how to
    finish it; a finished one keeps the copy hint."""
    import boto3

    from trainer.plan import remote_build_hint

    boto3.client("s3").create_bucket(Bucket="unfinished")
    boto3.client("s3").put_object(Bucket="unfinished", Key="mixes/killed/_plan.json", Body=b"{}")
    boto3.client("s3").put_object(Bucket="unfinished", Key="mixes/killed/part-00000.npy", Body=b"\0" * 8)
    assert main(["s3://unfinished/mixes/killed"]) == 2
    err = capsys.readouterr().err
    assert "s3://unfinished/mixes/killed is an incomplete build: no report.json" in err
    assert "rerun the same build command to finish it" in err
    assert "is an incomplete build" in remote_build_hint("s3://unfinished/mixes/killed")
    boto3.client("s3").put_object(Bucket="unfinished", Key="mixes/killed/report.json", Body=b"{}")
    assert "is an incomplete build" not in remote_build_hint("s3://unfinished/mixes/killed")
    assert "Copy the build first" in remote_build_hint("s3://unfinished/mixes/killed")


def test_a_build_on_s3_killed_before_its_plan_is_said_to_be_incomplete(s3_server, capsys):
    """A build killed before it wrote _plan.json (in its tokenize stage, say) leaves --out without
    report.json: validate sent it to publish, which refused it as unfinished (found by a tester). One
    HEAD of report.json tells; the copy advice follows, for once it is finished."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="killed-early")
    boto3.client("s3").put_object(Bucket="killed-early", Key="mixes/p1/_owner.json", Body=b"{}")
    assert main(["s3://killed-early/mixes/p1"]) == 2
    err = capsys.readouterr().err
    assert "s3://killed-early/mixes/p1 is an incomplete build: no report.json" in err
    assert "rerun the same build command to finish it, then copy it: `dolmino release publish" in err
    assert "Copy the build first" not in err


def test_a_missing_bucket_or_an_empty_prefix_on_s3_is_not_an_incomplete_build(s3_server, capsys):
    """`dolmino validate s3://nobucket/x` said "incomplete build ... rerun the same build command"
    (S3's HEAD answers 404 alike for a missing key and a missing bucket; found by a tester)."""
    import boto3

    from trainer.plan import remote_build_hint

    assert main(["s3://nobucket/mixes/x"]) == 2
    err = capsys.readouterr().err
    assert "Bucket nobucket does not exist" in err and "incomplete build" not in err, err
    boto3.client("s3").create_bucket(Bucket="emptyish")
    assert main(["s3://emptyish/mixes/x"]) == 2
    err = capsys.readouterr().err
    assert "Nothing is stored under s3://emptyish/mixes/x" in err and "incomplete build" not in err, err
    assert "Nothing is stored under" in remote_build_hint("s3://emptyish/mixes/x")


def test_a_published_release_on_s3_is_sent_to_pull(s3_server, capsys):
    """A release's location got the publish advice, which publish refuses for a release (found by a tester)."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="released")
    boto3.client("s3").put_object(Bucket="released", Key="mixes/demo-v1/RELEASE.json", Body=b"{}")
    assert main(["s3://released/mixes/demo-v1"]) == 2
    err = capsys.readouterr().err
    assert "s3://released/mixes/demo-v1 is a published release: `dolmino release pull s3://released/mixes/demo-v1 " \
           "DIR`" in err and "release publish" not in err and "incomplete" not in err


def test_a_part_changed_to_other_valid_ids_is_refused(tmp_path):
    """A part rewritten after the build with other in-vocabulary ids passed validate (the
    names matched report.json; only the ids were checked), while publish refused it and sent
    the user to validate. The SHA-256 report.json certifies is compared (--no-checksums skips)."""
    import hashlib

    out = tmp_path / "b"
    out.mkdir()
    np.asarray([5, 6, 7, EOS, 8, 9, EOS], dtype="<u4").tofile(out / "part-00000.npy")
    (out / "part-00000.csv.gz").write_bytes(gzip.compress(b"0,4,a,web,w.jsonl:1\n4,7,b,web,w.jsonl:2\n", mtime=0))
    listed = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("part-*")}
    (out / "report.json").write_text(json.dumps({"output": {"tokens": 7, "files_sha256": listed}}))
    assert not validate_build(out).all_errors()
    data = np.fromfile(out / "part-00000.npy", dtype="<u4")
    data[1] = 17  # another valid id
    data.tofile(out / "part-00000.npy")
    errors = validate_build(out).all_errors()
    assert len(errors) == 1 and "part-00000.npy: SHA-256" in errors[0]
    assert "the file changed after the build" in errors[0]
    assert main([str(out)]) == 1
    assert not validate_build(out, checksums=False).all_errors() and main([str(out), "--no-checksums"]) == 0


def test_a_report_whose_counts_disagree_with_its_parts_is_refused(tmp_path):
    """A report.json edited by hand (or copied from another build): its part's token count off
    by 1,000 read as OK, and publish released it (found by a tester). The trainer plans from
    output.tokens."""
    out = tmp_path / "b"
    out.mkdir()
    np.asarray([5, 6, 7, EOS, 8, 9, EOS], dtype="<u4").tofile(out / "part-00000.npy")
    (out / "part-00000.csv.gz").write_bytes(gzip.compress(b"0,4,a,web,w.jsonl:1\n4,7,b,web,w.jsonl:2\n", mtime=0))
    report = {"output": {"tokens": 7, "docs": 2, "parts": [{"name": "part-00000.npy", "tokens": 7, "docs": 2}]}}
    (out / "report.json").write_text(json.dumps(report))
    assert not validate_build(out).all_errors()
    report["output"]["parts"][0]["tokens"] = 1007
    report["output"]["docs"] = 3
    (out / "report.json").write_text(json.dumps(report))
    errors = validate_build(out).all_errors()
    assert errors == [f"{out / 'part-00000.npy'}: report.json says 1,007 tokens, the part holds 7",
                      f"{out / 'report.json'}: output.docs is 3, its parts hold 2"], errors
    for damaged in (5, [{"name": ["part-00000.npy"]}], ["part-00000.npy"]):  # one line, not a TypeError (a reviewer)
        report["output"]["parts"] = damaged
        (out / "report.json").write_text(json.dumps(report))
        assert validate_build(out).all_errors()[-1] == (f"{out / 'report.json'}: output.parts is not a list of part "
                                                        "records with names (a damaged report)")


def test_a_source_count_or_a_sidecar_src_that_disagrees_with_the_report_is_refused(build):
    """report.json's per-source output_tokens edited, or a sidecar row's `src` changed (checked with
    --no-checksums, as after a pull), read as OK: only the totals were compared (found by a tester).
    The report's sources are what its Mix % and `dolmino report` show."""
    rows = [r for p in sorted(build.glob("part-*.csv.gz")) for r in _sidecar_rows(p)]
    sources = [{"name": name, "output_tokens": sum(int(r[1]) - int(r[0]) for r in rows if r[3] == name),
                "output_docs": sum(r[3] == name for r in rows)} for name in ("wiki", "code", "math")]
    report = {"output": {"tokens": sum(s["output_tokens"] for s in sources), "docs": len(rows)}, "sources": sources}
    (build / "report.json").write_text(json.dumps(report))
    assert sources[0]["output_docs"] == 40 and sources[2]["output_docs"] == 0
    assert not validate_build(build).all_errors()
    sources[1]["output_tokens"] += 100
    (build / "report.json").write_text(json.dumps(report))
    have = sources[1]["output_tokens"] - 100
    assert validate_build(build).all_errors() == [
        f"{build / 'report.json'}: source 'code' output_tokens is {have + 100:,}, the sidecars' rows of it hold "
        f"{have:,}"]
    sources[1]["output_tokens"] -= 100
    (build / "report.json").write_text(json.dumps(report))
    sidecar = build / "part-00001.csv.gz"
    damaged = _sidecar_rows(sidecar)
    damaged[3][3] = "nosuchsource"
    _rewrite_sidecar(sidecar, damaged)
    errors = validate_build(build, checksums=False).all_errors()
    assert errors[0] == (f"{sidecar}: 1 row(s) name source 'nosuchsource' (first: row 3), which report.json does not "
                         "have"), errors
    assert len(errors) == 3 and "source 'code' output_docs is 40, the sidecars' rows of it hold 39" in errors[2]
    assert main([str(build), "--no-checksums"]) == 1


def test_a_length_histogram_that_is_not_the_sidecars_is_refused(build):
    """report.json's doc_tokens_hist (what `dolmino report` draws as "every part counted") was not
    checked: a build resumed over parts committed without a histogram counted only the parts it wrote,
    and validated OK (found by a tester). It must be the histogram of the sidecars' row lengths."""
    from dolmino.doc_lengths import histogram

    rows = [r for p in sorted(build.glob("part-*.csv.gz")) for r in _sidecar_rows(p)]
    lengths = {name: [int(r[1]) - int(r[0]) for r in rows if r[3] == name] for name in ("wiki", "code")}
    hist = {name: histogram(n) for name, n in lengths.items()}
    report = {"output": {"tokens": sum(map(sum, lengths.values())), "docs": len(rows)}, "doc_tokens_hist": hist}
    (build / "report.json").write_text(json.dumps(report))
    assert not validate_build(build).all_errors()
    report["doc_tokens_hist"] = {"wiki": histogram(lengths["wiki"][:25]), "code": hist["code"]}  # half of one source
    (build / "report.json").write_text(json.dumps(report))
    REMEDY = (" (a build resumed over parts that recorded none, before dolmino read them from the sidecars: run the "
              "same build command again; it keeps the parts and rewrites the report)")
    assert validate_build(build).all_errors() == [
        f"{build / 'report.json'}: doc_tokens_hist of source 'wiki' holds 25 document instance(s), not the lengths "
        f"of the sidecars' {len(lengths['wiki'])} row(s) of it" + REMEDY]
    report["doc_tokens_hist"] = {"wiki": hist["wiki"]}  # a source left out; one that is not there, all zeros, is none
    report["doc_tokens_hist"]["math"] = [0] * len(hist["wiki"])
    (build / "report.json").write_text(json.dumps(report))
    assert validate_build(build).all_errors() == [
        f"{build / 'report.json'}: doc_tokens_hist of source 'code' holds 0 document instance(s), not the lengths "
        f"of the sidecars' {len(lengths['code'])} row(s) of it" + REMEDY]
    assert main([str(build)]) == 1


def test_a_report_whose_file_list_is_not_a_mapping_is_one_error(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    np.asarray([5, 6, EOS], dtype="<u4").tofile(out / "part-00000.npy")
    (out / "report.json").write_text(json.dumps({"output": {"files_sha256": ["part-00000.npy"]}}))
    errors = validate_build(out).all_errors()
    assert any("output.files_sha256 is not a mapping" in e for e in errors)


def test_a_report_that_certifies_no_files_is_said_to(tmp_path, capsys):
    """A report.json without output.files_sha256 (`{}` too) turned every checksum and stale-part
    check off and validated OK, unsaid (found by a tester): valid memmaps, with a warning."""
    from dolmino.validate import validate_build

    out = tmp_path / "b"
    out.mkdir()
    writer = MemmapPartWriter(str(out), 0, EOS)
    writer.add(np.arange(5, dtype=np.uint32), "d", "s", "s:1")
    writer.close()
    (out / "report.json").write_text(json.dumps({"output": {"tokens": 6}}))
    result = validate_build(out)
    assert result.ok and result.all_warnings() == [
        f"{out / 'report.json'}: certifies no files (no output.files_sha256, which every dolmino build writes): the "
        "parts are checked as memmaps only, not as the ones this build wrote"]
    assert main([str(out)]) == 0
    assert "warning: " + result.all_warnings()[0] in capsys.readouterr().err
    assert not validate_build(out, checksums=False).all_warnings()  # --no-checksums asked for no certification


def test_a_report_the_trainer_would_refuse_is_refused(tmp_path, capsys):
    """report.json without output.tokens (or without output, or `{}`) validated OK, and the
    trainer then refused the build; a vocab_size other than manifest.json's passed too (found
    by a tester). A report that is not an object is one line."""
    from trainer.plan import DataError, data_tokens

    out = tmp_path / "b"
    out.mkdir()
    writer = MemmapPartWriter(str(out), 0, EOS)
    writer.add(np.arange(5, dtype=np.uint32), "d", "s", "s:1")
    writer.close()
    (out / "manifest.json").write_text(json.dumps({"tokenizer": {"vocab_size": 100278, "eos_token_id": EOS}}))
    report_path = out / "report.json"
    good = {"vocab_size": 100278, "output": {"tokens": 6, "docs": 1}}
    report_path.write_text(json.dumps(good))
    assert validate_build(out).ok
    no_tokens = f"{report_path}: no output.tokens (a count of tokens), which the trainer plans from (a damaged report)"
    for damaged in ({}, {"vocab_size": 100278}, {"output": {"docs": 1}}, {"output": {"tokens": "6"}},
                    {"output": {"tokens": True}}, {"output": []}):
        report_path.write_text(json.dumps(damaged))
        assert validate_build(out).all_errors() == [no_tokens], damaged
        assert main([str(out)]) == 1
        if damaged != {"output": {"tokens": "6"}}:  # the trainer reads int("6"); no build writes a string
            with pytest.raises(DataError):
                data_tokens([str(out)])
    report_path.write_text(json.dumps({"output": {"tokens": 6, "docs": "1"}}))
    assert validate_build(out).all_errors() == [
        f"{report_path}: output.docs is '1', not a count of documents (a damaged report)"]
    report_path.write_text(json.dumps({**good, "vocab_size": 1000}))
    assert validate_build(out).all_errors() == [
        f"{report_path}: vocab_size is 1000, the build's manifest.json says 100278 (the trainer checks the model "
        "against the report's; a damaged report)"]
    (out / "_plan.json").write_text("{}")  # a finished build keeps it: the report is damaged, not missing (a reviewer)
    report_path.write_text("[]")
    assert validate_build(out).all_errors() == [
        f"{report_path}: cannot read the build report (a JSON list, not an object)"]
    report_path.write_text('{"output": ')
    assert [e.split(" (")[0] for e in validate_build(out).all_errors()] == [
        f"{report_path}: cannot read the build report"]
    capsys.readouterr()


def test_a_label_mask_that_is_a_directory_is_one_error(build, capsys):
    mask = build / "part-00000.label_mask.npy"
    mask.unlink()
    mask.mkdir()
    result = validate_build(build, checksums=False)
    assert [e for e in result.all_errors() if "label mask" in e] == [
        f"{build / 'part-00000.npy'}: label mask {mask.name} cannot be read ([Errno 21] Is a directory: '{mask}')"]
    assert main([str(build), "--no-checksums"]) == 1


@pytest.mark.parametrize("flags", [["--vocab-size", "-1"], ["--vocab-size", "0"], ["--eos-id", "-1"]])
def test_impossible_ids_are_a_usage_error_not_a_verdict(tmp_path, capsys, flags):
    """Found by a tester: --vocab-size -1 called a good build INVALID (exit 1, "damaged")."""
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), *flags])
    assert exit_.value.code == 2 and "must be >= " in capsys.readouterr().err


@pytest.mark.parametrize("backend", BACKENDS)
def test_ids_past_int64_are_a_verdict_not_a_traceback(build, capsys, backend):
    """`--vocab-size` / `--eos-id` past int64 raised the C++ binding's TypeError (a traceback) while the
    fallback answered (found by a tester): no id reaches either, with either backend."""
    code, out = _run(build, capsys, backend, "--vocab-size", str(10**20), "--no-checksums")
    assert code == 0 and f"< vocab_size {10**20}, EOS {EOS} ends every document" in out
    code, out = _run(build, capsys, backend, "--eos-id", str(10**20), "--no-checksums")
    assert code == 1 and f"document(s) not ending in EOS {10**20}: sidecar rows 0, 1, 2, 3, 4, ..." in out
    assert "Traceback" not in out


def test_each_part_is_hashed_while_it_is_checked_not_all_first(tmp_path, monkeypatch):
    """All certified files were hashed before any part was checked: a build larger than the page
    cache (a 300B-token build holds 1.2 TB of parts) was read from disk twice. A part's files
    are hashed beside its check, at most `window` parts behind it."""
    import hashlib
    import threading

    from pathlib import Path

    import dolmino.checksums
    import dolmino.validate as validate

    out = tmp_path / "b"
    out.mkdir()
    for i in range(6):
        np.asarray([5, 6, 7, EOS], dtype="<u4").tofile(out / f"part-{i:05d}.npy")
        (out / f"part-{i:05d}.csv.gz").write_bytes(gzip.compress(b"0,4,a,web,w.jsonl:1\n", mtime=0))
    listed = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("part-*")}
    (out / "report.json").write_text(json.dumps({"output": {"tokens": 24, "files_sha256": listed}}))
    events, lock = [], threading.Lock()
    real_hash, real_check = dolmino.checksums.sha256_file, validate.validate_part

    def hashed(path):
        digest = real_hash(path)
        with lock:
            events.append(("hash", Path(path).name))
        return digest

    def checked(path, *args):
        with lock:
            events.append(("check", path.name))
        return real_check(path, *args)

    monkeypatch.setattr(dolmino.checksums, "sha256_file", hashed)
    monkeypatch.setattr(validate, "validate_part", checked)
    monkeypatch.setattr(validate.os, "cpu_count", lambda: 1)  # a window of one part
    assert not validate_build(out).all_errors()
    assert sorted(name for kind, name in events if kind == "hash") == sorted(listed)
    # Part 5 is hashed after part 0 is checked (not all first), and with a window of one part,
    # part 0's files are hashed before part 2 is checked.
    assert events.index(("check", "part-00000.npy")) < events.index(("hash", "part-00005.npy")), events
    assert max(events.index(("hash", f"part-00000{s}")) for s in (".npy", ".csv.gz")) \
        < events.index(("check", "part-00002.npy")), events


def test_a_token_file_below_a_finished_build_is_an_error(tmp_path):
    """A part copied into a subdirectory of a finished build passed validate (its listing check
    looked at the top level only) while the trainer refused the build: its report.json does not
    count the extra tokens (found by a reviewer)."""
    import hashlib

    out = tmp_path / "b"
    (out / "sub").mkdir(parents=True)
    np.asarray([5, 6, 7, EOS], dtype="<u4").tofile(out / "part-00000.npy")
    (out / "part-00000.csv.gz").write_bytes(gzip.compress(b"0,4,a,web,w.jsonl:1\n", mtime=0))
    listed = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("part-*")}
    (out / "report.json").write_text(json.dumps({"output": {"files_sha256": listed, "tokens": 4}}))
    assert not validate_build(out).all_errors()
    np.asarray([5, 6, 7, EOS], dtype="<u4").tofile(out / "sub" / "part-00000.npy")
    shutil.copy(out / "part-00000.csv.gz", out / "sub")
    errors = validate_build(out).all_errors()
    assert len(errors) == 1 and "sub/part-00000.npy: a token file inside the build" in errors[0]


def test_an_unfinished_release_pull_is_named_as_one(build, capsys):
    """A killed `dolmino release pull` leaves `.NAME.pull-XXXX` (holding `.pull-owner`) beside NAME: validate called
    it an incomplete build, "rerun the same build command to finish it", with an error per file not yet fetched,
    while the trainer names the pull (found by a tester)."""
    from dolmino.release import PULL_OWNER

    pulling = build.parent / ".demo-v1.pull-0123456789ab"
    build.rename(pulling)
    (pulling / "_plan.json").write_text("{}")  # a build's marker, downloaded; report.json not yet
    (pulling / PULL_OWNER).write_text("host 1 2\n")  # what dolmino.release's pull writes
    assert main([str(pulling)]) == 1
    err = capsys.readouterr().err
    assert err == (f"{pulling}: the temporary directory of an unfinished `dolmino release pull` into "
                   f"{build.parent / 'demo-v1'} (it holds .pull-owner; the pull was killed or is still running, and "
                   "its files are not all verified): rerun that pull to finish it, then validate that directory\n"
                   f"{pulling}: INVALID: 1 problem(s) with the build as a whole\n"), err


def test_a_manifest_json_that_is_not_the_builds_is_refused(build):
    """manifest.json with another seed (or name) than report.json records validated OK, where
    `release publish` refuses it (found by a tester): it is not what was built."""
    rows = [r for p in sorted(build.glob("part-*.csv.gz")) for r in _sidecar_rows(p)]
    report = {"manifest": "mix", "seed": 7, "output": {"tokens": sum(int(r[1]) - int(r[0]) for r in rows),
                                                       "docs": len(rows)}}
    (build / "report.json").write_text(json.dumps(report))
    manifest = {"name": "mix", "seed": 7, "tokenizer": {"vocab_size": 100278, "eos_token_id": EOS}}
    (build / "manifest.json").write_text(json.dumps(manifest))
    assert not validate_build(build).all_errors()
    (build / "manifest.json").write_text(json.dumps({**manifest, "seed": 8}))
    assert validate_build(build).all_errors() == [
        f"{build / 'manifest.json'}: seed is 8, but report.json says the build's was 7: manifest.json is not the "
        "build's (replaced since?); restore it or rebuild"]


def test_masked_token_counts_and_tokens_written_are_checked_against_the_parts(tmp_path):
    """report.json's label-masked token counts (total and per source) and totals.tokens_written,
    which report.md prints, were not compared with the parts: edited, they validated OK (a tester)."""
    out = tmp_path / "b"
    out.mkdir()
    np.asarray([5, 6, 7, EOS, 8, 9, EOS], dtype="<u4").tofile(out / "part-00000.npy")
    (out / "part-00000.csv.gz").write_bytes(gzip.compress(b"0,4,a,web,w.jsonl:1\n4,7,b,code,c.jsonl:1\n", mtime=0))
    np.asarray([1, 0, 0, 1, 0, 1, 1], dtype=np.uint8).tofile(out / "part-00000.label_mask.npy")
    report = {"output": {"tokens": 7, "docs": 2, "masked_tokens": 3,
                         "parts": [{"name": "part-00000.npy", "tokens": 7, "docs": 2}]},
              "totals": {"tokens_written": 7},
              "sources": [{"name": "web", "output_tokens": 4, "output_docs": 1, "output_masked_tokens": 2},
                          {"name": "code", "output_tokens": 3, "output_docs": 1, "output_masked_tokens": 1}]}
    (out / "report.json").write_text(json.dumps(report))
    assert not validate_build(out).all_errors()
    report["output"]["masked_tokens"], report["sources"][0]["output_masked_tokens"] = 5, 4
    report["totals"]["tokens_written"] = 8
    (out / "report.json").write_text(json.dumps(report))
    assert validate_build(out).all_errors() == [
        f"{out / 'report.json'}: totals.tokens_written is 8, its parts hold 7",
        f"{out / 'report.json'}: output.masked_tokens is 5, its label masks hold 3 masked (0) tokens",
        f"{out / 'report.json'}: source 'web' output_masked_tokens is 4, the label masks of its rows hold 2"]
