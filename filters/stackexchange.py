"""Stack Exchange Q&A documents from a dump's Posts.xml (Dolmino mix, SPEC.md §1).

Recipe: keep questions that have an accepted answer; drop the pair when the question has
fewer than 3 votes or the accepted answer fewer than 5 (both configurable); the document
is the question (title, then body) and the answer joined by a run of newlines one longer
than the longest newline run in either, so the seam is never mistaken for a paragraph
break inside a post.

Input. Posts.xml of the official dump (optionally .gz / .zst): an XML declaration,
`<posts>`, then one `<row Id=".." PostTypeId=".." .../>` per line (1 = question, 2 =
answer, others are wiki/tag posts and are ignored), with the post HTML escaped inside the
`Body` attribute and newlines as `&#xA;`. Files reach tens of GB, so rows are parsed one
line at a time with `xml.etree.ElementTree.fromstring` and dropped right after: memory is
bounded by the longest row, and a malformed row (bad XML, bytes that are not UTF-8, a
missing or non-numeric field, a number beyond int64: numbers are an optional '-' and ASCII
digits, as the dump writes them) is quarantined with its line number and a reason while the
rest of the file is read; a UTF-8 byte-order mark before the declaration is dropped.
(`iterparse` over the whole file would stop at the first malformed row; the dump's
one-row-per-line layout makes per-line parsing exact. A file with several rows on one line
has that line quarantined as `malformed_xml`, as has a row on the line of `<?xml` or `<posts>`.)

Answers may come before or after their question. Two passes over the file keep memory
bounded either way:
  1. collect (accepted answer id -> question id) for questions that have an accepted
     answer and enough votes: two sorted int64 arrays, 16 bytes per candidate question;
  2. stream again; a candidate's question or answer waits in a pending store until its
     other half arrives, then the document is emitted and both are forgotten. The store
     holds at most `max_pending_bytes` in memory and spills the rest to a temporary
     SQLite file, so a dump whose answers lag their questions by millions of rows still
     runs in bounded memory.
Questions whose accepted answer never shows up are removed as `answer_missing`.

HTML becomes text with `html.parser`: entities are decoded; `<p>`, headings, list items,
block quotes and tables end a paragraph (paragraphs are separated by one blank line);
`<br>` is a line break; a list item's first block starts with "- ", or with its number in an
ordered list ("1. ", counting from the list's `start`, the only numbering the site's sanitizer keeps: no
`reversed`, no `<li value>`), a code block included; each line of a block in a list or block quote inside
a list item is indented by the width of the enclosing items' markers ("1. Prepare:" then "   - flour"), as
is a list directly in a list (no item around it: under the item before it), and an item that starts with
one has its marker first ("- > quoted", "- - inner"); `<hr>` between two blocks is a block "---" (at the start or end of a post, none); the cells of a table row are separated by
" | ", an empty cell's too (a row without any text is dropped); each line of a block inside a block quote
starts with "> " (one per quote it is in, before the marker of a list inside it); a block of whitespace and
invisible format characters only (a zero-width space) is no block; `<pre>` blocks keep their code verbatim
(indentation and blank lines included); inline `<code>` keeps its text; script/style are dropped; runs of
whitespace outside `<pre>`, no-break spaces (`&nbsp;`) and Unicode's other space separators included,
collapse to one space.

Accounting: every question row is `kept` or removed with one reason
(`no_accepted_answer`, `question_score<3`, `answer_missing`, `answer_score<5`,
`answer_empty` for an accepted answer with no text once its HTML is converted (an image
alone: the document would be the question without an answer), and `duplicate_question`
for a candidate question row replaced by a later row with the same Id while it waited for
its answer); malformed rows of any type are quarantined by reason, and a file that ends
without the dump's closing `</posts>` line (cut short at a row boundary, or empty) gets one
`truncated_file` record after its last line.
`questions_seen == kept + sum(removed)`. `CONVERSION_REVISION` names these rules in the
build's attribute keys: a build tagged under other rules converts its Posts.xml again.

Byte ranges. Rows are one per line, so an uncompressed Posts.xml can be read in byte ranges
(a row belongs to the range in which it starts; a compressed one only whole). The build
converts a large file that way (`dolmino/build/stackexchange.py`) from the pieces here:
`scan_keys` (pass 1 of one range, with the (id, ParentId) of its answer rows),
`range_halves` (pass 2 of one range: quarantine, question rules, and the halves of candidate
pairs, lines numbered in the whole file) and `pair_halves` (one question id's halves in
line order, through the same `_pair_step` as the whole-file reader's pending store), with
the same documents, counts and quarantine records as `iter_stackexchange`.

    python -m filters.stackexchange Posts.xml --out se.jsonl.zst [--site math.stackexchange.com]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sqlite3
import sys
import tempfile
import unicodedata
import zlib
import xml.etree.ElementTree as ET
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import PurePosixPath
from typing import Iterator, NamedTuple

import numpy as np
import zstandard

from dolmino.documents import (
    CHUNK_READERS, CorruptStreamError, Quarantine, _plain_chunks, _range_chunks, _SizeChecked, compression, open_binary,
)

SOURCE = "stackexchange"
# The conversion rules' revision, in a build's attribute keys. 9: a list directly in a list (no item around
# it) is indented under the item before it (its items read as that item's siblings), and Unicode's other space
# separators (en/em/thin/hair spaces, U+202F, U+3000, ...) are spaces outside code blocks, as U+00A0 is;
# 8: a list item that starts with a block quote
# or a list has its marker before the quote's "> " or the inner marker ("- > q", "- - x"; it read "> - q", a
# quoted list, or lost the outer marker: "  - x"), a block quote in an item is indented as a nested list is,
# and a no-break space outside code blocks is a space (`&nbsp;` and U+00A0, in titles too);
# 7: a list inside a list item is indented
# (its items read as siblings of their parent: "1. Prepare:", "- flour", "2. Bake."), and `<hr>` between
# two blocks is "---" (it was dropped, joining the parts it separated); 6: a block quote's lines start with "> " (a
# quote read as the answer's own words), and a paragraph, list item or table cell of invisible characters
# only is none (an answer's "- \u200b" item, a "\u200b | \u200b" row);
# 5: an ordered list's items are numbered ("1. "; they read "- "), an empty table cell keeps its " | " (a
# row with an empty first cell lost a column), and a list item that starts with a code block has its
# marker there (it went to the next block);
# 4: a table's cells are separated (they ran together: "NameAge"), the "- " of a list item without text no
# longer lands on the next paragraph, and an answer of invisible characters only (a zero-width space) is
# `answer_empty`;
# 3: a file without its `</posts>` line is quarantined as `truncated_file`, and a question pairs only
# with the answer its AcceptedAnswerId names where a file repeats question Ids (a complete dump with
# unique Ids converts as under 2); 2: an accepted answer without text is removed (`answer_empty`);
# revision 1 (no key) kept its question as a document of its own.
CONVERSION_REVISION = 9


# ---------------------------------------------------------------------------- HTML -> text

_BLOCK_TAGS = frozenset({
    "p", "div", "pre", "blockquote", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tfoot", "tr", "hr", "dl", "dt", "dd", "section", "article",
    "details", "summary", "figure", "figcaption", "aside", "header", "footer",
})
_DROP_TAGS = frozenset({"script", "style"})
_LIST, _ITEM, _QUOTE = "list", "item", "quote"  # the kinds of `_HtmlToText.open`'s entries
_START = re.compile(r"-?[0-9]{1,9}")  # an `<ol start>` the site writes; anything else counts from 1
_CELL_TAGS = frozenset({"td", "th"})  # cells of a table row, separated so their words do not run together
# Outside `<pre>` a no-break space (U+00A0, `&nbsp;`) is a space: the site shows it as one, but the dolma2
# tokenizer reads it as a token of its own that also parts the next word from its space ("Use", "\xa0", "the":
# "Use the" is "Use", " the"); so are the other space separators (a thin space in "5\u2009kg", U+3000 indenting
# a Japanese paragraph); code blocks keep theirs, as every other byte.
_WIDE_SPACES = "\xa0\u1680\u2000-\u200a\u202f\u205f\u3000"  # Unicode's other space separators (Zs), alike
_SPACES = re.compile(f"[ \\t\\r\\n\\f\\v{_WIDE_SPACES}]+")
_WIDE_SPACE = re.compile(f"[{_WIDE_SPACES}]")
_MULTI_SPACE = re.compile(r" {2,}")


def _has_text(text: str) -> bool:
    """Something besides whitespace and invisible format characters (Unicode Cf: a zero-width space
    alone, `<p>&#8203;</p>`, was kept as an answer, and a paragraph, list item or table cell of one
    was a block of its own: a "- " item with nothing visible after it; testers)."""
    return any(not ch.isspace() and unicodedata.category(ch) != "Cf" for ch in text)


class _HtmlToText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self.inline: list[str] = []
        self.pre_depth = 0
        self.pre_parts: list[str] = []
        self.drop_depth = 0
        # Open lists, items and block quotes, outermost first, in the order a line's marks are written:
        # [_LIST, next number (None for <ul>)], [_ITEM, marker ("- ", "10. "), marker not yet written], [_QUOTE].
        self.open: list[list] = []
        self.rule = ""  # an `<hr>` after a block, written before the next block (none at a post's end)
        self.cells = 0  # cells begun in the current row since its last block (each after the first adds " | ")
        self.cell_text = False  # whether any of them has text: a row of empty cells is no "|" line

    def _flush(self) -> None:
        if self.cells and not self.cell_text:
            self.inline = []
        text = _MULTI_SPACE.sub(" ", "".join(self.inline))
        text = "\n".join(line.strip() for line in text.split("\n")).strip("\n")
        if _has_text(text):
            self._append(text)
        self.inline = []

    def _flush_pre(self) -> None:
        text = "".join(self.pre_parts).replace("\r\n", "\n").replace("\r", "\n")
        text = "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")
        if _has_text(text):
            self._append(text)
        self.pre_parts = []

    def _append(self, text: str) -> None:
        """A block of text, behind its list markers and its quotes' "> " (a quote read as the answer's
        own words: the manual's "Never do X" stood beside the answerer's "do X"; a tester)."""
        if self.rule:
            self.blocks.append(self.rule)
            self.rule = ""
        self.blocks.append(self._lines(text, marked=True))

    def _lines(self, text: str, marked: bool = False) -> str:
        """Each line behind the marks of the lists, items and quotes it is in, outermost first, as Markdown
        nests them: a quote's "> ", and an item's marker on its first block's first line ("- > q" for an
        item that starts with a quote: it read "> - q", a quoted list; a tester) and, on the other lines
        of what is nested in the item, spaces as wide (a nested list's items read as siblings of their
        parent without them; a tester). An item's own blocks are not indented. `marked`: the block
        writes the markers still due (a rule between blocks writes none)."""
        if not self.open:
            return text
        first = rest = ""
        last = len(self.open) - 1
        for depth, entry in enumerate(self.open):
            kind = entry[0]
            if kind is _QUOTE:
                first += "> "
                rest += "> "
            elif kind is _ITEM:
                pad = " " * len(entry[1]) if depth < last else ""
                if marked and entry[2]:
                    first += entry[1]
                    entry[2] = False
                else:
                    first += pad
                rest += pad
        head, *tail = text.split("\n")
        return "\n".join([(first + head).rstrip(), *[(rest + line).rstrip() for line in tail]])

    def _hr(self) -> None:
        """A rule between two blocks is "---" (dropped, it joined the parts it separated; a tester), one
        at a post's start or end separates nothing, and an `<hr>` alone leaves an answer empty."""
        self._block()
        if self.blocks:
            self.rule = self._lines("---")

    def _close(self, kind: str, stop: str | None = None) -> None:
        """An end tag closes the innermost open entry of its `kind` and what is still open inside it (a
        quote's unclosed list); one that nothing open matches, or only beyond a `stop` entry, is ignored."""
        for depth in range(len(self.open) - 1, -1, -1):
            if self.open[depth][0] is kind:
                del self.open[depth:]
                return
            if self.open[depth][0] is stop:
                return

    def handle_starttag(self, tag, attrs):
        if tag in _DROP_TAGS:
            self.drop_depth += 1
        elif self.pre_depth:
            if tag == "br":
                self.pre_parts.append("\n")
            elif tag == "pre":
                self.pre_depth += 1
        elif tag == "br":
            self.inline.append("\n")
        elif tag in _CELL_TAGS:
            if self.cells or "".join(self.inline).strip():
                self.inline.append(" | ")
            self.cells += 1
        elif tag == "pre":
            self._block()
            self.pre_depth = 1
        elif tag == "hr":
            self._hr()
        elif tag in _BLOCK_TAGS:
            self._block()
            if tag == "blockquote":
                self.open.append([_QUOTE])
            elif tag in ("ol", "ul"):
                if self.open and self.open[-1][0] is _LIST:
                    # A list directly in a list, no item around it (`<ul><li>a</li><ul><li>b</li></ul></ul>`, which
                    # the site's editor lets through): browsers indent it under the item before it, where its items
                    # read as siblings of that item; it stands in an item of no marker as wide as that one's.
                    number = self.open[-1][1]
                    width = 2 if number is None else len(f"{number - 1 if number > 1 else number}. ")
                    self.open.append([_ITEM, " " * width, False])
                start = (dict(attrs).get("start") or "").strip()
                self.open.append([_LIST, None if tag == "ul" else int(start) if _START.fullmatch(start) else 1])
            elif tag == "li":
                if self.open and self.open[-1][0] is _ITEM:  # the item before it, left open, ends here
                    self.open.pop()
                owner = self.open[-1] if self.open and self.open[-1][0] is _LIST else None
                number = owner[1] if owner else None
                if number is not None:
                    owner[1] += 1
                self.open.append([_ITEM, "- " if number is None else f"{number}. ", True])

    def _block(self) -> None:
        """A block starts or ends: the text so far is a paragraph, and a new row of cells begins."""
        self._flush()
        self.cells = 0
        self.cell_text = False

    def handle_startendtag(self, tag, attrs):
        if tag == "br":
            (self.pre_parts if self.pre_depth else self.inline).append("\n")
        elif tag == "hr" and not self.pre_depth:
            self._hr()
        elif tag in _BLOCK_TAGS and not self.pre_depth:
            self._block()

    def handle_endtag(self, tag):
        if tag in _DROP_TAGS:
            self.drop_depth = max(0, self.drop_depth - 1)
        elif self.pre_depth:
            if tag == "pre":
                self.pre_depth -= 1
                if not self.pre_depth:
                    self._flush_pre()
        elif tag in _BLOCK_TAGS:
            self._block()
            if tag == "blockquote":
                self._close(_QUOTE)
            elif tag == "li":
                self._close(_ITEM, stop=_LIST)
            elif tag in ("ul", "ol"):
                self._close(_LIST)

    def handle_data(self, data):
        if self.drop_depth:
            return
        if self.pre_depth:
            self.pre_parts.append(data)
        else:
            self.inline.append(_SPACES.sub(" ", data))
            self.cell_text = self.cell_text or _has_text(data)

    def text(self) -> str:
        self.close()
        if self.pre_depth:
            self._flush_pre()
        self._flush()
        return "\n\n".join(self.blocks)


def html_to_text(html: str) -> str:
    """Plain text of a post body (see the module docstring for the rules)."""
    parser = _HtmlToText()
    parser.feed(html)
    return parser.text()


_NEWLINE_RUN = re.compile(r"\n+")


def longest_newline_run(text: str) -> int:
    return max((len(m) for m in _NEWLINE_RUN.findall(text)), default=0)


def join_question_answer(question: str, answer: str) -> str:
    """question + a newline run one longer than the longest in either part + answer."""
    return question + "\n" * (max(longest_newline_run(question), longest_newline_run(answer)) + 1) + answer


def question_text(title: str, body_html: str) -> str:
    body = html_to_text(body_html)
    title = _WIDE_SPACE.sub(" ", title).strip()
    return f"{title}\n\n{body}" if body else title


def parse_tags(raw: str | None) -> list[str]:
    """`<python><numpy>` (older dumps) or `|python|numpy|` (2024 dumps) -> ["python", "numpy"]."""
    if not raw:
        return []
    if raw.startswith("<"):
        return re.findall(r"<([^<>]+)>", raw)
    return [t for t in raw.split("|") if t]


# ---------------------------------------------------------------------------- config & stats


@dataclass(frozen=True)
class StackExchangeConfig:
    min_question_score: int = 3
    min_answer_score: int = 5
    site: str | None = None            # default: from the path (see `site_of`)
    max_pending_bytes: int = 256 << 20  # pending posts held in memory before spilling to SQLite

    def __post_init__(self):
        for name in ("min_question_score", "min_answer_score", "max_pending_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.max_pending_bytes < 0:
            raise ValueError("max_pending_bytes must be >= 0")


@dataclass
class StackExchangeStats:
    """Counts for one or more files; `merge` adds another file's (Spark partitions)."""

    rows: int = 0
    questions_seen: int = 0
    kept: int = 0
    removed: Counter = field(default_factory=Counter)
    quarantined: Counter = field(default_factory=Counter)
    answers_seen: int = 0
    other_posts: int = 0
    spilled_posts: int = 0

    def merge(self, other: "StackExchangeStats") -> "StackExchangeStats":
        self.rows += other.rows
        self.questions_seen += other.questions_seen
        self.kept += other.kept
        self.removed.update(other.removed)
        self.quarantined.update(other.quarantined)
        self.answers_seen += other.answers_seen
        self.other_posts += other.other_posts
        self.spilled_posts += other.spilled_posts
        return self

    def check_balance(self) -> None:
        if self.questions_seen != self.kept + sum(self.removed.values()):
            raise AssertionError(f"stackexchange accounting: {self.questions_seen} questions seen != kept "
                                 f"{self.kept} + removed {dict(self.removed)}")

    def to_dict(self) -> dict:
        return {"rows": self.rows, "questions_seen": self.questions_seen, "kept": self.kept,
                "removed": dict(sorted(self.removed.items())),
                "quarantined": dict(sorted(self.quarantined.items())),
                "answers_seen": self.answers_seen, "other_posts": self.other_posts,
                "spilled_posts": self.spilled_posts}


# ---------------------------------------------------------------------------- rows


def _chunks_for(path: str):
    if (found := compression(path, (".xml",))) is not None:
        return CHUNK_READERS[found]
    if os.path.isdir(path):  # a site's directory (math.stackexchange.com) read "expected Posts.xml" (a tester)
        raise ValueError(f"{path}: a directory; give its Posts.xml ({os.path.join(path, 'Posts.xml')})")
    raise ValueError(f"{path}: expected Posts.xml, .xml.gz or .xml.zst (extract .7z dump archives first)")


def _iter_lines(path: str, byte_range: tuple[int, int] | None = None, size: int | None = None) -> Iterator[bytes]:
    """Raw lines (without the newline); with `byte_range=(start, end)`, the lines that start in
    that range of an uncompressed file (`dolmino.documents._range_chunks`: ranges tile a file).

    A UTF-8 byte-order mark at the start of the file is dropped (Windows tools write one before
    the XML declaration), here rather than in the row parser so that both passes, and the range
    that starts at byte 0, see the same first line as the whole-file reader. `size`: the size the
    build listed; a file holding another number of bytes raises InputChangedError where it ends
    (`dolmino.documents._SizeChecked`)."""
    chunks = _chunks_for(path)
    at_file_start = True
    if byte_range is not None:
        if chunks is not _plain_chunks:
            raise ValueError(f"{path}: a compressed Posts.xml can only be read whole, not by byte range")
        start, end = byte_range
        at_file_start = start == 0
        chunks = lambda raw: _range_chunks(raw, start, end)  # noqa: E731
    tail = b""
    with open_binary(path) if size is None else _SizeChecked(open_binary(path), path, size) as raw:
        try:
            for chunk in chunks(raw):
                lines = (tail + chunk).split(b"\n")
                tail = lines.pop()
                if at_file_start and lines:
                    lines[0] = _strip_bom(lines[0])
                    at_file_start = False
                yield from lines
        except CorruptStreamError as exc:
            exc.partial_line = tail  # the cut last line, for its quarantine record (as the JSONL reader's)
            raise
    if tail:
        yield _strip_bom(tail) if at_file_start else tail


_BOM = b"\xef\xbb\xbf"


def _strip_bom(line: bytes) -> bytes:
    return line[len(_BOM):] if line.startswith(_BOM) else line


_STRUCTURE = (b"<?xml", b"<posts", b"</posts", b"<!--")
_END = b"</posts"
# A Posts.xml is complete when its `</posts>` line is there: without it the file was cut short at a
# row boundary, or is empty, and the rows after the cut are gone with no malformed row to say so.
TRUNCATED = "truncated_file"
_TRUNCATED_DETAIL = ("the file ends without the dump's closing </posts> line, so it was cut short (an interrupted "
                     "extraction or copy) and its rows after the cut are missing: extract this site's Posts.xml again")


def _holds_end(line: bytes) -> bool:
    """Whether a line holds the closing `</posts>`: on its own, as the dump writes it, or ending a
    line quarantined as malformed (a file on one line). Only the line's ends are looked at, so
    that both passes test every line at no cost (a row cannot hold a raw `<` in a value)."""
    return _END in line[:64] or _END in line[-64:]


_ROW_START = re.compile(rb"<row[\s/>]")


class _BadRow(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


# What the dump writes for a number: `int()` would also take "1_0", "+5", " 5" and non-ASCII
# digits, which no dump writes, so such a row is quarantined rather than read as a guess.
_DUMP_INT = re.compile(r"-?[0-9]+")
# Ids (and, for one rule, every numeric field) are held in int64 arrays and SQLite INTEGER
# keys; a value beyond int64 is no real post's and would abort the file there.
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _fits_int64(value: int) -> bool:
    return _INT64_MIN <= value <= _INT64_MAX


def _int_field(attrib: dict, name: str, required: bool = True) -> int | None:
    value = attrib.get(name)
    if value is None or value == "":
        if required:
            raise _BadRow(f"missing_{_snake(name)}", f"row has no {name}")
        return None
    if not _DUMP_INT.fullmatch(value):
        raise _BadRow(f"bad_{_snake(name)}", f"{name}={value!r} is not an integer")
    number = int(value)
    if not _fits_int64(number):
        raise _BadRow(f"bad_{_snake(name)}", f"{name}={value!r} is beyond int64")
    return number


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass
class _Post:
    kind: str                  # "question" | "answer" | "other"
    id: int
    line: int
    attrib: dict


def _parse_post(line_no: int, raw: bytes) -> _Post | None:
    """One line -> a post, None for structure lines; raises _BadRow for a malformed row."""
    stripped = raw.strip()
    if not stripped:
        return None
    if stripped.startswith(_STRUCTURE):
        # `<posts><row .../>`, or a whole file on one line (as ElementTree writes one): skipped as
        # structure, its rows were lost with no count (found by a tester)
        if _ROW_START.search(stripped):
            raise _BadRow("malformed_xml", "a <row> shares its line with XML structure (<?xml, <posts>): rows are "
                                           "read one per line, as the dump writes them; put each row on a line")
        return None
    if not stripped.startswith(b"<row"):
        raise _BadRow("not_a_row", "line is neither a <row> nor XML structure")
    try:
        stripped.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadRow("invalid_utf8", str(exc)) from None
    try:
        elem = ET.fromstring(stripped)
    except ET.ParseError as exc:
        raise _BadRow("malformed_xml", str(exc)) from None
    if elem.tag != "row":
        raise _BadRow("not_a_row", f"element <{elem.tag}>")
    attrib = dict(elem.attrib)
    post_id = _int_field(attrib, "Id")
    post_type = _int_field(attrib, "PostTypeId")
    if post_type == 1:
        _int_field(attrib, "Score")
        _int_field(attrib, "AcceptedAnswerId", required=False)
        if not attrib.get("Title", "").strip():
            raise _BadRow("missing_title", "question row has no Title")
        if "Body" not in attrib:
            raise _BadRow("missing_body", "question row has no Body")
        return _Post("question", post_id, line_no, attrib)
    if post_type == 2:
        _int_field(attrib, "ParentId")
        _int_field(attrib, "Score")
        if "Body" not in attrib:
            raise _BadRow("missing_body", "answer row has no Body")
        return _Post("answer", post_id, line_no, attrib)
    return _Post("other", post_id, line_no, attrib)


# A compressed stream that breaks part-way: the data's fault, quarantined. Not any OSError: a
# storage failure (S3ObjectError, a missing file) or a file that no longer has its listed size
# (InputChangedError) must stop the task, not become one `corrupt_stream` line and lost rows.
_BROKEN_STREAM = (zstandard.ZstdError, EOFError, zlib.error, gzip.BadGzipFile)


def _posts(path: str, on_bad=None, byte_range: tuple[int, int] | None = None, first_line: int = 0,
           size: int | None = None) -> Iterator[_Post]:
    """Parsed rows; a compressed stream that breaks part-way ends the file with one
    `corrupt_stream` quarantine record (the rows before the break are kept), a whole file
    without its `</posts>` line with one `truncated_file` record after its last line (a byte
    range cannot tell: `range_halves`). Rows of a byte range are numbered from `first_line + 1`
    (the lines of the ranges before it)."""
    line_no = first_line
    ended = False
    try:
        for line_no, raw in enumerate(_iter_lines(path, byte_range, size), start=first_line + 1):
            ended = ended or _holds_end(raw)
            try:
                post = _parse_post(line_no, raw)
            except _BadRow as bad:
                if on_bad is not None:
                    on_bad(line_no, bad.reason, str(bad), raw)
                continue
            if post is not None:
                yield post
        if byte_range is None and not ended and on_bad is not None:
            on_bad(line_no + 1, TRUNCATED, _TRUNCATED_DETAIL, b"")
    except _BROKEN_STREAM as exc:
        if on_bad is not None:
            # As the JSONL reader records a break: the cut line as raw, its size, the bytes lost.
            partial = bytes(getattr(exc, "partial_line", None) or b"")
            named = str(exc) if isinstance(exc, CorruptStreamError) else f"{type(exc).__name__}: {exc}"
            on_bad(line_no + 1, "corrupt_stream", named + (f"; line cut at {len(partial):,} bytes" if partial else ""),
                   partial, unreadable_bytes=getattr(exc, "unreadable_bytes", 0))


# ---------------------------------------------------------------------------- pending store


class _PendingStore:
    """Each question id's waiting halves (`_pair_step`'s state): a dict, spilling to SQLite past a budget."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.mem: dict[int, Waiting] = {}
        self.mem_bytes = 0
        self.db: sqlite3.Connection | None = None
        self.db_dir: tempfile.TemporaryDirectory | None = None
        self.spilled = 0

    @staticmethod
    def _size(waiting: "Waiting") -> int:
        posts = ([waiting.question] if waiting.question is not None else []) + list(waiting.answers)
        return sum(200 + sum(len(v) for v in payload.values() if isinstance(v, str)) for payload in posts)

    def put(self, qid: int, waiting: "Waiting") -> None:
        size = self._size(waiting)
        if self.mem_bytes + size <= self.max_bytes:
            self.mem[qid] = waiting
            self.mem_bytes += size
            return
        if self.db is None:
            self.db_dir = tempfile.TemporaryDirectory(prefix="dolmino-se-")
            self.db = sqlite3.connect(os.path.join(self.db_dir.name, "pending.sqlite"))
            self.db.execute("PRAGMA journal_mode=OFF")
            self.db.execute("PRAGMA synchronous=OFF")
            self.db.execute("CREATE TABLE pending (qid INTEGER PRIMARY KEY, waiting TEXT)")
        self.db.execute("INSERT OR REPLACE INTO pending VALUES (?, ?)", (qid, json.dumps(waiting)))
        self.spilled += 1

    def pop(self, qid: int) -> "Waiting | None":
        item = self.mem.pop(qid, None)
        if item is not None:
            self.mem_bytes -= self._size(item)
            return item
        if self.db is None:
            return None
        row = self.db.execute("SELECT waiting FROM pending WHERE qid = ?", (qid,)).fetchone()
        if row is None:
            return None
        self.db.execute("DELETE FROM pending WHERE qid = ?", (qid,))
        return _waiting_from_json(row[0])

    def remaining(self) -> Iterator[tuple[int, "Waiting"]]:
        for qid in sorted(self.mem):
            yield qid, self.mem[qid]
        if self.db is not None:
            for qid, waiting in self.db.execute("SELECT qid, waiting FROM pending ORDER BY qid"):
                yield qid, _waiting_from_json(waiting)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        if self.db_dir is not None:
            self.db_dir.cleanup()
            self.db_dir = None


# ---------------------------------------------------------------------------- reader


def site_of(path: str) -> str:
    """The site a Posts.xml belongs to: `<site>-Posts.xml`, else the parent directory's name."""
    p = PurePosixPath(str(path).replace("\\", "/"))
    stem = p.name
    for suffix in (".zst", ".zstd", ".gz", ".xml"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    if stem.lower().endswith("-posts") and len(stem) > len("-posts"):
        return stem[: -len("-posts")]
    parent = p.parent.name
    return parent if parent and parent not in (".", "/") else "unknown"


# Literal-first patterns, so that `re` skips ahead to the attribute name instead of trying
# every position; `_attr_values` then checks the whitespace before the name.
_QUESTION_TYPE = re.compile(rb'PostTypeId="(\d+)"')
_SINGLE_QUOTED = re.compile(rb"=\s*'")  # a single-quoted value may hold a raw `"`
_NUMERIC_ATTRS = {name: re.compile(name.encode() + rb'="(-?\d+)"')
                  for name in ("Id", "Score", "AcceptedAnswerId")}
_XML_SPACE = frozenset(b" \t\r\n")


def _attr_values(pattern: re.Pattern, line: bytes) -> list[bytes]:
    return [m.group(1) for m in pattern.finditer(line) if m.start() > 0 and line[m.start() - 1] in _XML_SPACE]


def _candidate_fields(line: bytes, answer_keys: bool = False) -> tuple | None | bool:
    """Pass 1's fields read straight from a canonical row: (id, score, accepted answer id) of a
    question; with `answer_keys`, (id, parent id) of an answer; False when the row is neither
    (or an answer not asked for); None when the row must be parsed as XML.

    Dump rows are `<row Name="value" .../>` with double quotes, where a value cannot hold a raw
    `"`; so each `Name="digits"` match after whitespace is that attribute. Anything else (a
    single-quoted value, spaces around `=`, a repeated or non-numeric attribute) goes through
    the XML parser."""
    if _SINGLE_QUOTED.search(line):
        return None
    kinds = _attr_values(_QUESTION_TYPE, line)
    if len(kinds) != 1:
        return None
    kind = int(kinds[0])  # int(), as the XML path reads it: "01" is a question too
    if kind == 2 and answer_keys:
        found = [_attr_values(pattern, line) for pattern in _ANSWER_ATTRS.values()]
        if any(len(values) != 1 for values in found):
            return None
        answer_id, parent = int(found[0][0]), int(found[1][0])
        if not (_fits_int64(answer_id) and _fits_int64(parent)):
            return None  # the parser quarantines it (`_int_field`)
        return answer_id, parent
    if kind != 1:
        return False
    fields = {}
    for name, pattern in _NUMERIC_ATTRS.items():
        found = _attr_values(pattern, line)
        if len(found) > 1 or (not found and name.encode() in line):  # e.g. `Name = "1"`: let XML read it
            return None
        fields[name] = int(found[0]) if found else None
        if fields[name] is not None and not _fits_int64(fields[name]):
            return None  # the parser quarantines it (`_int_field`)
    if fields["Id"] is None or fields["Score"] is None:
        return None
    return fields["Id"], fields["Score"], fields["AcceptedAnswerId"]


_ANSWER_ATTRS = {name: re.compile(name.encode() + rb'="(-?\d+)"') for name in ("Id", "ParentId")}


class KeyScan(NamedTuple):
    """Pass 1 over a file or one byte range of it: int64 arrays in file order."""

    lines: int  # lines read: a byte range's rows are numbered after the lines of the ranges before it
    candidate_answers: np.ndarray  # accepted answer id of each question that may be kept
    candidate_questions: np.ndarray  # that question's id
    answer_ids: np.ndarray  # with answer_keys: the id of every answer row
    answer_parents: np.ndarray  # and its ParentId
    ended: bool = False  # a line of it holds the closing `</posts>` (`range_halves`' end_line)


def _int64(values: array) -> np.ndarray:
    return np.frombuffer(values, dtype=np.int64).copy() if len(values) else np.empty(0, np.int64)


def scan_keys(path: str, config: StackExchangeConfig, byte_range: tuple[int, int] | None = None,
              answer_keys: bool = False, size: int | None = None) -> KeyScan:
    """Pass 1: (accepted answer id, question id) of every question that may be kept, and with
    `answer_keys` (id, ParentId) of every answer row (the split conversion's join keys).

    Reads the numeric attributes without an XML parse where the row is in the dumps'
    canonical form (two thirds of pass 1's time was ElementTree); a row that fails pass 2's
    parse may add a pair here, which is harmless: pass 2 quarantines that question, and an
    answer is matched on (its id, its ParentId), so a stray pair cannot take another
    question's answer. Answer keys may likewise hold rows pass 2 refuses; they are only
    intersected with the candidate pairs, never trusted on their own."""
    answers, questions, answer_ids, answer_parents = array("q"), array("q"), array("q"), array("q")
    lines = 0
    ended = False
    try:
        for lines, line in enumerate(_iter_lines(path, byte_range, size), start=1):
            ended = ended or _holds_end(line)
            fields = _candidate_fields(line, answer_keys)
            if fields is False:
                continue
            if fields is not None and len(fields) == 2:
                answer_ids.append(fields[0])
                answer_parents.append(fields[1])
                continue
            if fields is None:
                try:
                    post = _parse_post(0, line)
                except _BadRow:
                    continue
                if post is None:
                    continue
                if post.kind == "answer" and answer_keys:
                    answer_ids.append(post.id)
                    answer_parents.append(int(post.attrib["ParentId"]))
                if post.kind != "question":
                    continue
                fields = (post.id, int(post.attrib["Score"]),
                          _int_field(post.attrib, "AcceptedAnswerId", required=False))
            post_id, score, accepted = fields
            if accepted is None or score < config.min_question_score:
                continue
            answers.append(accepted)
            questions.append(post_id)
    except _BROKEN_STREAM:
        pass  # a stream that breaks part-way: pass 2 reads up to the same point and quarantines the break
    return KeyScan(lines, _int64(answers), _int64(questions), _int64(answer_ids), _int64(answer_parents), ended)


def accepted_lookup(answer_ids: np.ndarray, question_ids: np.ndarray) -> tuple[array, array]:
    """(accepted answer id, question id) pairs sorted for `_is_accepted_pair`."""
    order = np.lexsort((question_ids, answer_ids))
    sorted_answers, sorted_questions = array("q"), array("q")
    sorted_answers.frombytes(np.ascontiguousarray(answer_ids[order], dtype=np.int64).tobytes())
    sorted_questions.frombytes(np.ascontiguousarray(question_ids[order], dtype=np.int64).tobytes())
    return sorted_answers, sorted_questions


def _candidates(path: str, config: StackExchangeConfig, size: int | None = None) -> tuple[array, array]:
    """Pass 1 over a whole file: its candidate pairs, sorted (see `scan_keys`)."""
    scan = scan_keys(path, config, size=size)
    return accepted_lookup(scan.candidate_answers, scan.candidate_questions)


def _is_accepted_pair(answer_ids: array, question_ids: array, answer_id: int, question_id: int) -> bool:
    """Whether question `question_id` names `answer_id` as its accepted answer (pass 1's pairs).

    Binary search on compact int64 arrays: 16 bytes per candidate question, where a set of
    tuples would take ~10x that on a dump with millions of questions."""
    lo = bisect_left(answer_ids, answer_id)
    hi = bisect_right(answer_ids, answer_id, lo)
    return any(question_ids[i] == question_id for i in range(lo, hi))


def _document(site: str, path: str, q: dict, a: dict, answer: str) -> dict:
    text = join_question_answer(question_text(q["title"], q["body"]), answer)
    doc = {
        "id": f"se-{site}-{q['id']}",
        "text": text,
        "source": SOURCE,
        "metadata": {
            "site": site, "question_id": q["id"], "answer_id": a["id"],
            "question_score": q["score"], "answer_score": a["score"], "tags": parse_tags(q.get("tags")),
            "title": q["title"].strip(), "path": str(path), "line": q["line"],
        },
    }
    if q.get("created"):
        doc["created"] = q["created"]
    return doc


# ---------------------------------------------------------------------------- pass 2: halves and pairs


class PostHalf(NamedTuple):
    """One half of a candidate Q&A pair, as pass 2 holds it until the other half arrives."""

    question_id: int
    line: int  # the row's line in the file
    kind: str  # "question" | "answer"
    payload: dict  # question: id, score, title, body, tags, created, line, accepted; answer: id, score, body


def _half(post: _Post, lookup: tuple[array, array], config: StackExchangeConfig,
          stats: StackExchangeStats) -> PostHalf | None:
    """A parsed row -> the half it contributes, or None (counted: other post, question rule, not accepted)."""
    attrib = post.attrib
    if post.kind == "other":
        stats.other_posts += 1
        return None
    if post.kind == "answer":
        stats.answers_seen += 1
        qid = int(attrib["ParentId"])
        if not _is_accepted_pair(*lookup, post.id, qid):
            return None
        score = int(attrib["Score"])
        # A low-scored answer only needs its score: its pair is removed anyway.
        body = attrib["Body"] if score >= config.min_answer_score else ""
        return PostHalf(qid, post.line, "answer", {"id": post.id, "score": score, "body": body})
    stats.questions_seen += 1
    accepted = _int_field(attrib, "AcceptedAnswerId", required=False)
    score = int(attrib["Score"])
    if accepted is None:
        stats.removed["no_accepted_answer"] += 1
        return None
    if score < config.min_question_score:
        stats.removed[f"question_score<{config.min_question_score}"] += 1
        return None
    return PostHalf(post.id, post.line, "question", {
        "id": post.id, "score": score, "title": attrib["Title"], "body": attrib["Body"],
        "tags": attrib.get("Tags"), "created": attrib.get("CreationDate"), "line": post.line, "accepted": accepted})


class Waiting(NamedTuple):
    """One question id's halves waiting for their other half: its latest question row, and the
    answer rows (one per answer id, the latest) that some question row of this id names."""

    question: dict | None
    answers: tuple  # answer payloads


def _waiting_from_json(text: str) -> Waiting:
    question, answers = json.loads(text)
    return Waiting(question, tuple(answers))


def _pair_step(waiting: Waiting | None, half: PostHalf) -> tuple[Waiting | None, tuple | None, dict | None]:
    """One question id's pending state after `half` arrives: (what waits now, (question, answer)
    completed, a waiting question that `half` replaced).

    A question and the answer row its AcceptedAnswerId names complete a pair, whichever comes
    first; until then each waits. A later question row with the same Id replaces the waiting one
    (the last row wins) and is removed as `duplicate_question`, so that every question row is
    accounted for; a repeated answer row replaces the waiting one of its id. Only a file with
    repeated question Ids holds a question whose waiting answer is not its own (another row of
    that Id names it): the pair is always matched on the answer's id, never made of a question
    and an answer it does not accept (found by a tester)."""
    question, answers = waiting if waiting is not None else (None, ())
    if half.kind == "answer":
        if question is not None and question["accepted"] == half.payload["id"]:
            pair, question = (question, half.payload), None
        else:
            pair, answers = None, tuple(a for a in answers if a["id"] != half.payload["id"]) + (half.payload,)
        replaced = None
    else:
        replaced, question = question, half.payload
        own = [a for a in answers if a["id"] == question["accepted"]]
        pair = None
        if own:
            pair, question, answers = (question, own[0]), None, tuple(a for a in answers if a is not own[0])
    left = Waiting(question, answers) if question is not None or answers else None
    return left, pair, replaced


def _finish(q: dict, a: dict, config: StackExchangeConfig, stats: StackExchangeStats, site: str,
            path: str) -> tuple[dict | None, str | None]:
    """(document, None), or (None, reason) when the accepted answer's score is too low or it
    holds no text once its HTML is converted (an image alone, an empty element)."""
    if a["score"] < config.min_answer_score:
        reason = f"answer_score<{config.min_answer_score}"
        stats.removed[reason] += 1
        return None, reason
    answer = html_to_text(a["body"])
    if not _has_text(answer):
        stats.removed["answer_empty"] += 1
        return None, "answer_empty"
    stats.kept += 1
    return _document(site, path, q, a, answer), None


def _quarantiner(path: str, stats: StackExchangeStats, quarantine: Quarantine | None):
    def on_bad(line_no: int, reason: str, detail: str, raw: bytes, unreadable_bytes: int = 0) -> None:
        stats.rows += 1
        stats.quarantined[reason] += 1
        if quarantine is not None:
            quarantine.add(path, line_no, reason, detail, raw, unreadable_bytes=unreadable_bytes)

    return on_bad


def iter_stackexchange(path: str, config: StackExchangeConfig = StackExchangeConfig(),
                       stats: StackExchangeStats | None = None,
                       quarantine: Quarantine | None = None, size: int | None = None) -> Iterator[dict]:
    """Dolma documents (id "se-<site>-<question id>") from one Posts.xml; see the module doc.
    `size`: the file's listed size (`_iter_lines`)."""
    path = str(path)
    stats = StackExchangeStats() if stats is None else stats
    site = config.site or site_of(path)
    lookup = _candidates(path, config, size)
    pending = _PendingStore(config.max_pending_bytes)
    try:
        for post in _posts(path, _quarantiner(path, stats, quarantine), size=size):
            stats.rows += 1
            half = _half(post, lookup, config, stats)
            if half is None:
                continue
            waiting, pair, replaced = _pair_step(pending.pop(half.question_id), half)
            if waiting is not None:
                pending.put(half.question_id, waiting)
            if replaced is not None:
                stats.removed["duplicate_question"] += 1
            if pair is not None:
                doc, _reason = _finish(*pair, config, stats, site, path)
                if doc is not None:
                    yield doc
        for _qid, waiting in pending.remaining():
            if waiting.question is not None:
                stats.removed["answer_missing"] += 1
        stats.spilled_posts += pending.spilled
    finally:
        pending.close()


# ---------------------------------------------------------------------------- split conversion


class PairOutcome(NamedTuple):
    """What became of one candidate pair, at the row where the whole-file reader decides it."""

    line: int  # the completing row (a document, `answer_score<N`); the question row (`answer_missing`,
    #            `duplicate_question`)
    doc: dict | None
    reason: str | None  # None: kept


def range_halves(path: str, byte_range: tuple[int, int], first_line: int, lookup: tuple[array, array],
                 config: StackExchangeConfig, stats: StackExchangeStats,
                 quarantine: Quarantine | None = None, size: int | None = None,
                 end_line: int | None = None) -> Iterator[PostHalf]:
    """Pass 2 over one byte range: the halves its rows contribute, with lines numbered after
    `first_line`; `lookup` needs only the candidate pairs whose answer row lies in this range.
    `end_line`: given to the file's last range when no range's pass 1 found the `</posts>` line
    (`KeyScan.ended`), the line after the file's last, where the whole-file reader records
    `truncated_file`."""
    path = str(path)
    on_bad = _quarantiner(path, stats, quarantine)
    for post in _posts(path, on_bad, byte_range, first_line, size):
        stats.rows += 1
        half = _half(post, lookup, config, stats)
        if half is not None:
            yield half
    if end_line is not None:
        on_bad(end_line, TRUNCATED, _TRUNCATED_DETAIL, b"")


def pair_halves(halves, config: StackExchangeConfig, stats: StackExchangeStats, path: str) -> Iterator[PairOutcome]:
    """One question id's halves, in line order -> outcomes, exactly as `iter_stackexchange`'s
    pending store decides them (the same `_pair_step`)."""
    path = str(path)
    site = config.site or site_of(path)
    waiting = None
    for half in halves:
        waiting, pair, replaced = _pair_step(waiting, half)
        if replaced is not None:
            stats.removed["duplicate_question"] += 1
            yield PairOutcome(replaced["line"], None, "duplicate_question")
        if pair is not None:
            doc, reason = _finish(*pair, config, stats, site, path)
            yield PairOutcome(half.line, doc, reason)
    if waiting is not None and waiting.question is not None:
        stats.removed["answer_missing"] += 1
        yield PairOutcome(waiting.question["line"], None, "answer_missing")


def read_stackexchange(path: str, min_question_score: int = 3, min_answer_score: int = 5,
                       stats: StackExchangeStats | None = None, *, site: str | None = None,
                       quarantine: Quarantine | None = None,
                       max_pending_bytes: int = StackExchangeConfig.max_pending_bytes) -> Iterator[dict]:
    """Documents from one Posts.xml with the Dolmino thresholds (question >= 3, answer >= 5)."""
    config = StackExchangeConfig(min_question_score, min_answer_score, site, max_pending_bytes)
    return iter_stackexchange(path, config, stats, quarantine)


def main(argv: list[str] | None = None) -> int:
    from dolmino.documents import write_documents, write_quarantine

    from dolmino.help_format import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(prog="python -m filters.stackexchange", formatter_class=DefaultsHelpFormatter,
                                     description="Stack Exchange Posts.xml -> Dolma Q&A documents.")
    parser.add_argument("posts", help="Posts.xml (.xml, .xml.gz or .xml.zst)")
    parser.add_argument("--out", required=True, help="output Dolma JSONL (.jsonl, .jsonl.gz, .jsonl.zst)")
    parser.add_argument("--site", default=None, help="site name for ids (default: from the path)")
    parser.add_argument("--min-question-score", type=int, default=3, help="keep questions with at least this score")
    parser.add_argument("--min-answer-score", type=int, default=5,
                        help="keep accepted answers with at least this score")
    parser.add_argument("--quarantine", default=None,
                        help="write malformed rows here (JSONL, .gz or .zst); written every run, empty when none")
    args = parser.parse_args(argv)
    stats = StackExchangeStats()
    quarantine = Quarantine(keep_records=bool(args.quarantine))
    try:
        _check_paths(args)
        written = write_documents(args.out, read_stackexchange(
            args.posts, args.min_question_score, args.min_answer_score, stats, site=args.site,
            quarantine=quarantine))
        if args.quarantine:  # also when empty: an earlier run's records would contradict this summary
            write_quarantine(args.quarantine, quarantine.records)
    except (OSError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    stats.check_balance()
    print(json.dumps({"out": args.out, "documents": written, **stats.to_dict()}, indent=2))
    return 0


def _check_paths(args) -> None:
    """Refuse, before reading, an input the reader refuses and an output that names an input or
    the other output (through links) or cannot be written: `--out` equal to `--quarantine` kept
    only the quarantine, and a bad --quarantine failed after --out was written (found by a tester)."""
    from filters.outputs import check_output

    _chunks_for(args.posts)  # the suffix
    if not args.posts.startswith("s3://") and not os.path.isfile(args.posts):
        raise ValueError(f"{args.posts}: " + ("is a directory: name the Posts.xml in it" if os.path.isdir(args.posts)
                                             else "no such file"))
    check_output("--out", args.out, [("posts", args.posts)], documents=True)
    if args.quarantine:
        check_output("--quarantine", args.quarantine, [("posts", args.posts), ("--out", args.out)], documents=True)


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
