"""Stack Exchange Posts.xml -> Q&A documents, on fixtures in the real dump schema.

No real dump is obtainable here, so the fixtures are written the way the official
Posts.xml is: an XML declaration, `<posts>`, one `<row .../>` per line, post HTML escaped
inside `Body` with newlines as `&#xA;`. Bulk fixtures take their paragraphs and code from
the shared real-text corpus, and expected texts are computed from those parts directly,
not from the HTML converter under test.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re

import pytest
import zstandard

from conftest import shared_corpus_file
from dolmino.documents import Quarantine, read_documents
from filters import stackexchange as se
from filters.stackexchange import (
    StackExchangeStats, html_to_text, join_question_answer, longest_newline_run, parse_tags,
    read_stackexchange, site_of,
)


def esc(value: str) -> str:
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("\r", "&#xD;").replace("\n", "&#xA;").replace("\t", "&#x9;"))


def row(**attrs) -> str:
    return "  <row " + " ".join(f'{k}="{esc(str(v))}"' for k, v in attrs.items()) + " />"


def question(qid, score, title, body, accepted=None, tags="<python>", created="2020-01-01T00:00:00.000"):
    attrs = {"Id": qid, "PostTypeId": 1}
    if accepted is not None:
        attrs["AcceptedAnswerId"] = accepted
    attrs.update(CreationDate=created, Score=score, ViewCount=100, Body=body, OwnerUserId=7,
                 LastActivityDate=created, Title=title, Tags=tags, AnswerCount=1, CommentCount=0,
                 ContentLicense="CC BY-SA 4.0")
    return row(**attrs)


def answer(aid, parent, score, body):
    return row(Id=aid, PostTypeId=2, ParentId=parent, CreationDate="2020-01-02T00:00:00.000", Score=score,
               Body=body, OwnerUserId=8, LastActivityDate="2020-01-02T00:00:00.000", CommentCount=0,
               ContentLicense="CC BY-SA 4.0")


def posts_xml(rows: list[str]) -> str:
    return '<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "\n".join(rows) + "\n</posts>\n"


def write_posts(tmp_path, rows, name="Posts.xml", site_dir="cooking.stackexchange.com"):
    d = tmp_path / site_dir
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    path.write_text(posts_xml(rows), encoding="utf-8")
    return path


Q_BODY = """<p>I have a list of dictionaries:</p>

<pre><code>data = [{'name': 'b', 'age': 3},
        {'name': 'a', 'age': 3}]
</code></pre>

<p>How do I sort it by <code>age</code> &amp; keep the order of equal items? I tried <a href="https://docs.python.org">the docs</a>.</p>
"""
A_BODY = """<p>Python's sort is <em>stable</em>, so use <code>sorted</code> with a key:</p>

<pre><code>from operator import itemgetter


result = sorted(data, key=itemgetter('age'))
if a &lt; b:
    pass
</code></pre>

<ul>
<li>It runs in O(n log n).</li>
<li>Equal keys keep their order.<br>See the HOWTO.</li>
</ul>
"""
Q_TEXT = ("How do I sort a list of dicts by a value & keep ties stable?\n\nI have a list of dictionaries:\n\n"
          "data = [{'name': 'b', 'age': 3},\n        {'name': 'a', 'age': 3}]\n\n"
          "How do I sort it by age & keep the order of equal items? I tried the docs.")
A_TEXT = ("Python's sort is stable, so use sorted with a key:\n\nfrom operator import itemgetter\n\n\n"
          "result = sorted(data, key=itemgetter('age'))\nif a < b:\n    pass\n\n"
          "- It runs in O(n log n).\n\n- Equal keys keep their order.\nSee the HOWTO.")


def test_exact_document_answer_before_question(tmp_path):
    path = write_posts(tmp_path, [
        answer(12, 11, 9, A_BODY),
        row(Id=13, PostTypeId=5, Score=0, Body="<p>tag wiki</p>"),
        question(11, 4, "How do I sort a list of dicts by a value & keep ties stable?", Q_BODY, accepted=12,
                 tags="<python><sorting>", created="2013-05-01T10:00:00.000"),
    ])
    stats = StackExchangeStats()
    docs = list(read_stackexchange(str(path), stats=stats))
    assert len(docs) == 1
    doc = docs[0]
    # The answer's longest newline run is 3 (blank lines in its code): the seam has 4.
    assert doc["text"] == Q_TEXT + "\n\n\n\n" + A_TEXT
    assert doc["id"] == "se-cooking.stackexchange.com-11"
    assert doc["source"] == "stackexchange" and doc["created"] == "2013-05-01T10:00:00.000"
    assert doc["metadata"] == {
        "site": "cooking.stackexchange.com", "question_id": 11, "answer_id": 12, "question_score": 4,
        "answer_score": 9, "tags": ["python", "sorting"],
        "title": "How do I sort a list of dicts by a value & keep ties stable?", "path": str(path), "line": 5,
    }
    assert stats.to_dict() == {"rows": 3, "questions_seen": 1, "kept": 1, "removed": {}, "quarantined": {},
                               "answers_seen": 1, "other_posts": 1, "spilled_posts": 0}


def test_newline_rule():
    assert join_question_answer("Q\n\nbody", "A") == "Q\n\nbody\n\n\nA"
    assert join_question_answer("Title", "one line") == "Title\none line"
    assert join_question_answer("T\n\nx", "code\n\n\n\n\nmore") == "T\n\nx" + "\n" * 6 + "code\n\n\n\n\nmore"
    assert longest_newline_run("") == 0 and longest_newline_run("a\nb\n\n\nc\n") == 3


@pytest.mark.parametrize("html,text", [
    ("<p>a &amp;lt;b&amp;gt; &lt;tag&gt; &copy; &#8364;</p>", "a &lt;b&gt; <tag> © €"),
    ("<p>one\n   two\tthree</p><p>four</p>", "one two three\n\nfour"),
    ("<pre>\n  indented\n\n\n  code  \n</pre>", "  indented\n\n\n  code"),
    ("<p>x<script>alert(1)</script>y<style>p{}</style></p>", "xy"),
    ("<ol><li><p>first</p></li><li>second<ul><li>nested</li></ul></li></ol>", "1. first\n\n2. second\n\n   - nested"),
    ("<h1>Head</h1>text<br/>after break<hr>tail", "Head\n\ntext\nafter break\n\n---\n\ntail"),
    ("<blockquote><p>quoted</p></blockquote><p>unclosed <b>bold", "> quoted\n\nunclosed bold"),
    ("<p>inline <code>a  &lt;  b</code> code</p>", "inline a < b code"),
    ("", ""),
])
def test_html_to_text(html, text):
    assert html_to_text(html) == text


@pytest.mark.parametrize("html,text", [
    # a Markdown table as the site renders it: cells ran together ("NameAge", "Bob3")
    ('<table class="s-table"><thead><tr><th>Name</th><th>Age</th></tr></thead>'
     "<tbody><tr><td>Bob</td><td>3</td></tr></tbody></table>", "Name | Age\n\nBob | 3"),
    # an item holding only an image or nothing: its "- " went to the next paragraph or heading
    ('<ul><li><img src="https://i.sstatic.net/x.png"></li></ul><p>The plot above.</p>', "The plot above."),
    ("<p>A</p><ol><li>  </li></ol><h2>Title</h2>", "A\n\nTitle"),
    ("<ul><li><pre><code>make</code></pre></li></ul><p>then run it</p>", "- make\n\nthen run it"),
])
def test_tables_and_lists_keep_their_words_and_places(html, text):
    """Found by a tester: table cells were joined with nothing, and an item without text of its own
    lent its "- " to the block after the list."""
    assert html_to_text(html) == text


@pytest.mark.parametrize("html,text", [
    # an ordered list read as bullets: "- a" / "- b" (pandoc and html2text number them); `start` as the site
    # writes it
    ("<ol><li>a</li><li>b</li></ol>", "1. a\n\n2. b"),
    ('<p>Then:</p><ol start="3"><li>c</li><li><p>d</p><ul><li>e</li></ul></li><li>f</li></ol>',
     "Then:\n\n3. c\n\n4. d\n\n   - e\n\n5. f"),
    ('<ol start="two"><li>a</li></ol>', "1. a"),
    # a row-header table: its empty first cell lost its column ("A" read as the header of "x")
    ("<table><tr><th></th><th>A</th><th>B</th></tr><tr><td>x</td><td></td><td>2</td></tr>"
     '<tr><td><img src="x.png"></td><td> </td></tr></table>', "| A | B\n\nx | | 2"),
    # an item that starts with code: its "- " went to the paragraph after the code
    ("<ul><li><pre><code>make\n  all</code></pre>then run it</li></ul>", "- make\n  all\n\nthen run it"),
    ("<ol><li><pre>make</pre><p>then run it</p></li><li>done</li></ol>", "1. make\n\nthen run it\n\n2. done"),
])
def test_ordered_lists_empty_cells_and_code_items_keep_their_structure(html, text):
    """Found by testers: ordered lists lost their numbers, a table whose first cell is empty lost its
    column, and a list marker landed after a leading code block."""
    assert html_to_text(html) == text


@pytest.mark.parametrize("html,text", [
    # the manual's words read as the answerer's, right beside the answerer's contrary advice
    ("<p>The manual says:</p>\n<blockquote>\n<p>Never open the oven door.</p>\n</blockquote>\n"
     "<p>I open it anyway.</p>\n", "The manual says:\n\n> Never open the oven door.\n\nI open it anyway."),
    # every line of a quoted block, code included (a blank line of code keeps its ">"), one mark per quote
    ("<blockquote><p>a<br>b</p><pre><code>x\n\n  y</code></pre><blockquote><p>inner</p></blockquote>"
     "<ol><li>item</li></ol></blockquote><p>out</p>", "> a\n> b\n\n> x\n>\n>   y\n\n> > inner\n\n> 1. item\n\nout"),
    ("<blockquote>bare</blockquote></blockquote>after", "> bare\n\nafter"),
])
def test_a_block_quote_reads_as_a_quote(html, text):
    """Found by a tester: a block quote ended a paragraph and nothing more, so a quoted manual, error
    message or question read as the answer's own words (html2text and markdownify write "> ")."""
    assert html_to_text(html) == text


@pytest.mark.parametrize("html,text", [
    ("<p>Use this:</p><p>\u200b</p><p>done</p>", "Use this:\n\ndone"),
    ("<ul><li>a</li><li>&#8203;</li></ul><p>b</p>", "- a\n\nb"),
    ("<ul><li>\u200b<pre><code>make</code></pre></li></ul>", "- make"),
    ("<table><tr><td>\u200b</td><td>\u2060</td></tr><tr><td>a</td><td>b</td></tr></table>", "a | b"),
    ("<blockquote><p>\ufeff</p></blockquote><p>z</p>", "z"),
    ("<p>a\u200bb \u200dc</p>", "a\u200bb \u200dc"),  # inside words they stay (a joiner can matter)
])
def test_a_block_of_invisible_characters_is_no_block(html, text):
    """Found by a tester: an answer of a zero-width space alone was made `answer_empty`, but as one
    paragraph, list item or table cell among others it stayed a block of its own (a "- " item, a " | "
    row with nothing visible), and a question's body of one followed its title as a paragraph."""
    assert html_to_text(html) == text
    assert se.question_text("Why?", "<p>&#8203;</p>") == "Why?"


@pytest.mark.parametrize("html,text", [
    # the testers' recipe: "- flour" read as a step of its own between 1 and 2
    ("<ol><li>Prepare:<ul><li>flour</li></ul></li><li>Bake.</li></ol>", "1. Prepare:\n\n   - flour\n\n2. Bake."),
    # two levels deep, a line break and a code block in a nested item: every line keeps the indentation
    ("<ul><li>a<ul><li>b<br>c<ol><li><pre>x\n\n  y</pre></li></ol></li></ul>back</li></ul>",
     "- a\n\n  - b\n  c\n\n    1. x\n\n      y\n\nback"),
    ("<blockquote><ul><li>q<ul><li>r</li></ul></li></ul></blockquote>", "> - q\n\n>   - r"),
    ("<ul><li>x</li></ul><ol start=\"9\"><li>y<ul><li>z</li></ul></li></ol>", "- x\n\n9. y\n\n   - z"),
    # a list directly in a list, no item around it (the site's editor lets it through): under the item before it
    ("<ul><li>a</li><ul><li>b</li><li>c</li></ul><li>d</li></ul>", "- a\n\n  - b\n\n  - c\n\n- d"),
    ("<ol start=\"9\"><li>a</li><ul><li>b</li></ul><li>c</li></ol>", "9. a\n\n   - b\n\n10. c"),
    ("<ul><li>a</li><ul><li>b</li><ol><li>c</li></ol></ul>text</ul>", "- a\n\n  - b\n\n    1. c\n\ntext"),
])
def test_a_nested_list_is_indented(html, text):
    """Found by a tester: a list inside a list item was written at the left margin, so its items read as
    siblings of their parent (html2text indents them); so was a list directly in a list (no `<li>` around it),
    which browsers indent."""
    assert html_to_text(html) == text


@pytest.mark.parametrize("html,text", [
    ("<p>a</p><hr><p>b</p>", "a\n\n---\n\nb"),
    ("<hr/><p>a</p><hr><hr><p>\u200b</p><p>b</p><hr>", "a\n\n---\n\nb"),  # one between two blocks, none at the ends
    ("<blockquote><p>a</p><hr><p>b</p></blockquote>", "> a\n\n> ---\n\n> b"),
    ("<hr>", ""),
])
def test_a_horizontal_rule_between_blocks_is_kept(html, text):
    """Found by a tester: `<hr>` was dropped, joining the parts it separated (an answer's "Edit:" part, a
    second solution); html2text writes "* * *", Markdown "---". An answer of a rule alone stays empty."""
    assert html_to_text(html) == text


@pytest.mark.parametrize("html,text", [
    # Markdown "- > Never open the oven door." as the site renders it: it read "> - Never ...", a quoted list
    ("<ul>\n<li>\n<blockquote>\n<p>Never open the oven door.</p>\n</blockquote>\n<p>I open it anyway.</p>\n</li>\n"
     "</ul>", "- > Never open the oven door.\n\nI open it anyway."),
    ("<ol start=\"0\"><li><blockquote><p>a<br>b</p></blockquote></li><li>c</li></ol>", "0. > a\n   > b\n\n1. c"),
    # a quote after the item's first paragraph belongs to the item, as a list there does (it stood at the margin)
    ("<ol><li><p>The manual says:</p><blockquote><p>never<br>ever</p></blockquote></li><li>Bake.</li></ol>",
     "1. The manual says:\n\n   > never\n   > ever\n\n2. Bake."),
    # Markdown "1. - flour": the item that starts with a list lost its "1.", and "- flour" read as step one
    ("<ol>\n<li>\n<ul>\n<li>flour</li>\n<li>salt</li>\n</ul>\n</li>\n<li>Bake.</li>\n</ol>",
     "1. - flour\n\n   - salt\n\n2. Bake."),
    ("<ul><li><blockquote><ul><li>x</li><li>y</li></ul></blockquote></li></ul>", "- > - x\n\n  > - y"),
])
def test_an_item_that_starts_with_a_quote_or_a_list_has_its_marker_first(html, text):
    """Found by testers: a list item's marker was written after the quotes' "> " it is in, so an item
    that starts with a block quote read as a quoted list ("> - q"; Markdown writes "- > q"), and an item
    that starts with a list had its marker overwritten by the inner one."""
    assert html_to_text(html) == text


def test_a_quote_in_a_list_item_reads_so_in_the_document(tmp_path):
    """The dump's own rows: an answer whose steps quote the manual (Markdown "1. > Preheat ...")."""
    a_body = ("<ol>\n<li>\n<blockquote>\n<p>Preheat the oven.</p>\n</blockquote>\n<p>The manual says so.</p>\n</li>\n"
              "<li>Bake for 20 minutes.</li>\n</ol>\n")
    path = write_posts(tmp_path, [question(1, 5, "Steps?", "<p>How?</p>", accepted=2), answer(2, 1, 9, a_body)])
    [doc] = read_stackexchange(str(path))
    assert doc["text"] == ("Steps?\n\nHow?\n\n\n"
                           "1. > Preheat the oven.\n\nThe manual says so.\n\n2. Bake for 20 minutes.")


def test_a_no_break_space_is_a_space_outside_code_blocks(tmp_path):
    """A no-break space (`&nbsp;` as Markdown passes it through, or U+00A0 pasted in) stayed in the text,
    where the dolma2 tokenizer reads it as a token of its own that also parts the next word from its
    space; the site shows a space. A code block keeps its bytes."""
    from dolmino.assets import dolma2_tokenizer_path
    from tokenizers import Tokenizer

    q_body = ("<p>Press&nbsp;<kbd>Ctrl</kbd>&nbsp;+&nbsp;<kbd>C</kbd> and\u00a0then&nbsp; &nbsp;paste "
              "<code>a\u00a0b</code>.</p>")
    a_body = "<p>The\u00a0file has one:</p>\n<pre><code>x\u00a0= 1\n</code></pre>\n<p>&nbsp;</p>\n"
    path = write_posts(tmp_path, [question(1, 5, "Why\u00a0does\u00a0paste fail?", q_body, accepted=2),
                                  answer(2, 1, 9, a_body)])
    [doc] = read_stackexchange(str(path))
    assert doc["text"] == ("Why does paste fail?\n\nPress Ctrl + C and then paste a b.\n\n\n"
                           "The file has one:\n\nx\u00a0= 1")
    tokens = Tokenizer.from_file(str(dolma2_tokenizer_path())).encode(doc["text"].split("\n")[0]).tokens
    assert tokens == ["Why", "Ġdoes", "Ġpaste", "Ġfail", "?"]


@pytest.mark.parametrize("space", ["\u2002", "\u2003", "\u2009", "\u200a", "\u202f", "\u205f", "\u3000", "\u1680"])
def test_every_unicode_space_separator_is_a_space_outside_code_blocks(space):
    """As U+00A0: a thin space in "5\u2009kg" or U+3000 before a paragraph stayed, each a token of its own for
    the dolma2 tokenizer; the site shows a space. Code keeps its bytes; titles are text too."""
    assert html_to_text(f"<p>{space}5{space}kg and{space} {space}more</p><pre>a{space}b</pre>") == \
        f"5 kg and more\n\na{space}b"
    assert se.question_text(f"Why{space}not?{space}", "") == "Why not?"


# Outputs of html_to_text over `_RULES_SAMPLE`, pinned with the revision that produced them: a change of
# the converted text without a new CONVERSION_REVISION would leave stored documents sets in use.
_RULES_SAMPLE = (
    "<ol><li>a</li><li><pre>make</pre>b</li></ol><ul><li>c</li></ul>",
    "<table><tr><th></th><th>A</th></tr><tr><td>x</td><td>1</td></tr><tr><td></td><td></td></tr></table>",
    "<p>one\n  two<br>three &amp; <code>x  y</code></p><pre>\n  code\n\n</pre><h2>h</h2><ul><li><img></li></ul>z",
    "<blockquote><p>q<br>r</p></blockquote><ul><li>&#8203;</li></ul><p>\u200b</p>s",
    "<hr><ol><li>a<ul><li>b</li></ul></li></ol><hr>c<hr>",
    "<ul><li><blockquote><p>q</p></blockquote><p>a&nbsp;\u00a0b</p></li><li><ol><li>c</li></ol></li></ul>"
    "<pre>d\u00a0e</pre>",
    "<ul><li>a</li><ul><li>b\u2009c\u3000d</li></ul></ul><pre>e\u2009f</pre>",
)
_RULES_AT_REVISION = (9, ("1. a\n\n2. make\n\nb\n\n- c", "| A\n\nx | 1", "one two\nthree & x y\n\n  code\n\nh\n\nz",
                          "> q\n> r\n\ns", "1. a\n\n   - b\n\n---\n\nc", "- > q\n\na b\n\n- 1. c\n\nd\u00a0e",
                          "- a\n\n  - b c d\n\ne\u2009f"))


def test_a_change_of_the_converted_text_comes_with_a_new_conversion_revision():
    got = tuple(html_to_text(html) for html in _RULES_SAMPLE)
    assert (se.CONVERSION_REVISION, got) == _RULES_AT_REVISION, (
        "the converted text changed: bump CONVERSION_REVISION and pin its outputs here")


def test_tags_and_site():
    assert parse_tags("<c++><string>") == ["c++", "string"]
    assert parse_tags("|python|pandas|") == ["python", "pandas"]
    assert parse_tags(None) == [] and parse_tags("") == []
    assert site_of("data/math.stackexchange.com/Posts.xml") == "math.stackexchange.com"
    assert site_of("s3://bucket/dumps/superuser.com-Posts.xml.zst") == "superuser.com"
    assert site_of("Posts.xml") == "unknown"


def test_thresholds_and_removal_reasons(tmp_path):
    body = "<p>Some question body text.</p>"
    rows = [
        question(1, 10, "no accepted answer", body),
        question(2, 2, "question score 2", body, accepted=102), answer(102, 2, 50, "<p>a</p>"),
        question(3, 3, "question score 3 (edge, kept)", body, accepted=103), answer(103, 3, 5, "<p>five</p>"),
        question(4, 9, "answer score 4", body, accepted=104), answer(104, 4, 4, "<p>four</p>"),
        question(5, 9, "accepted answer absent", body, accepted=999),
        answer(106, 77, 10, "<p>parent mismatch</p>"), question(6, 9, "answer under another parent", body,
                                                                  accepted=106),
        answer(107, 7, 100, "<p>not the accepted one</p>"), answer(108, 7, 6, "<p>accepted</p>"),
        question(7, 3, "two answers", body, accepted=108),
        # a picture alone, or markup without text: the document would be the question without an answer
        question(8, 9, "answered with a picture", body, accepted=109),
        answer(109, 8, 9, '<p><img src="https://i.sstatic.net/x.png" alt="a plot"></p>'),
        answer(110, 9, 9, "<p> <a href='https://example.com'></a> </p>"),
        question(9, 9, "empty link", body, accepted=110),
        # a zero-width space alone is no text either (it was kept as an answer; a tester)
        answer(111, 10, 9, "<p>&#8203;</p>"), question(10, 9, "zero-width space", body, accepted=111),
    ]
    path = write_posts(tmp_path, rows)
    stats = StackExchangeStats()
    docs = list(read_stackexchange(str(path), stats=stats))
    assert [d["metadata"]["question_id"] for d in docs] == [3, 7]
    assert docs[0]["text"] == "question score 3 (edge, kept)\n\nSome question body text.\n\n\nfive"
    assert docs[1]["text"].endswith("\n\n\naccepted")
    assert stats.removed == {"no_accepted_answer": 1, "question_score<3": 1, "answer_score<5": 1,
                             "answer_missing": 2, "answer_empty": 3}
    assert stats.questions_seen == 10 and stats.kept == 2
    stats.check_balance()

    loose = StackExchangeStats()
    docs = list(read_stackexchange(str(path), min_question_score=0, min_answer_score=0, stats=loose))
    assert [d["metadata"]["question_id"] for d in docs] == [2, 3, 4, 7]
    assert loose.removed == {"no_accepted_answer": 1, "answer_missing": 2, "answer_empty": 3}


def test_malformed_rows_are_quarantined(tmp_path):
    good_q = question(1, 5, "Good question", "<p>body</p>", accepted=2)
    good_a = answer(2, 1, 6, "<p>good answer</p>")
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>', "<posts>",
        '  <row Id="3" PostTypeId="1" Score="5" Title="unescaped "quote"" Body="x" />',      # 3 malformed_xml
        good_a,                                                                              # 4
        '  <row PostTypeId="2" ParentId="1" Score="3" Body="no id" />',                     # 5 missing_id
        '  <row Id="4" PostTypeId="1" Score="high" Title="t" Body="b" AcceptedAnswerId="2" />',  # 6 bad_score
        '  <row Id="5" PostTypeId="1" Score="4" Body="no title" />',                        # 7 missing_title
        '  <row Id="6" PostTypeId="2" ParentId="1" Score="4" />',                            # 8 missing_body
        "garbage that is not xml",                                                           # 9 not_a_row
        '  <row Id="7" PostTypeId="x" />',                                                   # 10 bad_post_type_id
        '  <row Id="8" PostTypeId="2" ParentId="1" Score="1" Body="a" /><row Id="9" PostTypeId="2" />',  # 11
        '  <row Id="10" PostTypeId="1" Score="4" Title="t" Body="b" AcceptedAnswerId="two" />',  # 12
        good_q,                                                                              # 13
        "</posts>",
    ]
    raw = "\n".join(lines).encode("utf-8").replace(b"garbage", b"\xff\xfegarbage")
    raw = raw + b"\n  <row Id=\"11\" PostTypeId=\"1\" Title=\"\xc3\x28\" />\n"
    path = tmp_path / "Posts.xml"
    path.write_bytes(raw)
    stats, quarantine = StackExchangeStats(), Quarantine()
    docs = list(read_stackexchange(str(path), stats=stats, quarantine=quarantine))
    assert [d["text"] for d in docs] == ["Good question\n\nbody\n\n\ngood answer"]
    got = sorted((r.line, r.reason) for r in quarantine.records)
    assert got == [(3, "malformed_xml"), (5, "missing_id"), (6, "bad_score"), (7, "missing_title"),
                   (8, "missing_body"), (9, "not_a_row"), (10, "bad_post_type_id"), (11, "malformed_xml"),
                   (12, "bad_accepted_answer_id"), (15, "invalid_utf8")]
    assert sum(stats.quarantined.values()) == 10 == quarantine.total
    assert stats.rows == 12 and stats.questions_seen == 1 and stats.kept == 1
    stats.check_balance()


def _corpus_posts(n: int, seed: int):
    """n Q&A pairs with bodies made of real corpus paragraphs and code; expected texts built directly."""
    rng = random.Random(seed)
    paras, code = [], []
    for _, doc in read_documents(str(shared_corpus_file("web.jsonl.zst")), Quarantine()):
        for p in doc["text"].split("\n\n"):
            p = " ".join(p.split())
            if 40 <= len(p) <= 400 and not re.search(r"[<>&]", p):
                paras.append(p)
        if len(paras) > 4 * n:
            break
    for _, doc in read_documents(str(shared_corpus_file("code.jsonl.zst")), Quarantine()):
        block = "\n".join(line.rstrip() for line in doc["text"].split("\n")[:12]).strip("\n")
        if block.strip():
            code.append(block)
        if len(code) > n:
            break
    rows, expected = [], {}
    for k in range(n):
        qid, aid = 1000 + 2 * k, 1001 + 2 * k
        q_paras = rng.sample(paras, 2)
        a_paras = rng.sample(paras, 1)
        a_code = code[k]
        title = q_paras[0][:60].strip()
        q_html = "".join(f"<p>{p}</p>\n\n" for p in q_paras)
        a_html = f"<p>{a_paras[0]}</p>\n\n<pre><code>{esc_html(a_code)}\n</code></pre>\n"
        q_text = title + "\n\n" + "\n\n".join(q_paras)
        a_text = a_paras[0] + "\n\n" + a_code
        sep = "\n" * (max(longest_run(q_text), longest_run(a_text)) + 1)
        qrow = question(qid, rng.randint(3, 50), title, q_html, accepted=aid)
        arow = answer(aid, qid, rng.randint(5, 90), a_html)
        other = answer(50_000 + k, qid, rng.randint(0, 90), "<p>another answer</p>")
        rows.extend([qrow, arow, other])
        expected[f"se-cooking.stackexchange.com-{qid}"] = q_text + sep + a_text
    rng.shuffle(rows)   # answers land before and after their questions
    return rows, expected


def esc_html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def longest_run(text: str) -> int:
    return max((len(m) for m in re.findall(r"\n+", text)), default=0)


def test_any_row_order_with_spill_to_disk(tmp_path):
    rows, expected = _corpus_posts(150, seed=3)
    path = write_posts(tmp_path, rows)
    in_memory, spilled = StackExchangeStats(), StackExchangeStats()
    docs = {d["id"]: d["text"] for d in read_stackexchange(str(path), stats=in_memory)}
    docs_spill = {d["id"]: d["text"] for d in read_stackexchange(str(path), stats=spilled, max_pending_bytes=0)}
    assert docs == expected
    assert docs_spill == expected
    assert in_memory.spilled_posts == 0 and spilled.spilled_posts > 0
    assert in_memory.kept == spilled.kept == 150 and in_memory.answers_seen == 300


def test_compressed_inputs_and_cli(tmp_path, capsys):
    rows, expected = _corpus_posts(20, seed=5)
    rows.append('  <row Id="1" PostTypeId="1" Score="oops" Title="t" Body="b" />')
    data = posts_xml(rows).encode("utf-8")
    d = tmp_path / "cooking.stackexchange.com"
    d.mkdir()
    (d / "Posts.xml.gz").write_bytes(gzip.compress(data))
    (d / "Posts.xml.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    for name in ("Posts.xml.gz", "Posts.xml.zst"):
        assert {x["id"]: x["text"] for x in read_stackexchange(str(d / name))} == expected
    out, qpath = tmp_path / "se.jsonl.zst", tmp_path / "quarantine.jsonl.gz"
    assert se.main([str(d / "Posts.xml.zst"), "--out", str(out), "--quarantine", str(qpath)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents"] == 20 and summary["quarantined"] == {"bad_score": 1}
    written = {doc["id"]: doc["text"] for _, doc in read_documents(str(out), Quarantine())}
    assert written == expected
    q = [json.loads(line) for line in gzip.decompress(qpath.read_bytes()).splitlines()]
    assert q[0]["reason"] == "bad_score" and 'Score="oops"' in q[0]["raw"]


def test_huge_pathological_body(tmp_path):
    junk = "g40D" * 500_000
    path = write_posts(tmp_path, [
        question(1, 5, "Binary junk", f"<pre><code>{junk}</code></pre>", accepted=2),
        answer(2, 1, 5, "<p>" + "word " * 100_000 + "</p>"),
    ])
    docs = list(read_stackexchange(str(path)))
    assert len(docs) == 1
    assert docs[0]["text"] == "Binary junk\n\n" + junk + "\n\n\n" + " ".join(["word"] * 100_000)


def test_truncated_stream_and_unsupported_suffix(tmp_path):
    rows, expected = _corpus_posts(30, seed=11)
    rows.sort(key=lambda r: int(re.search(r'Id="(\d+)"', r).group(1)))   # file order by Id, like the dump
    data = posts_xml(rows).encode("utf-8")
    d = tmp_path / "cooking.stackexchange.com"
    d.mkdir()
    path = d / "Posts.xml.zst"
    cut = data.index(b"\n", len(data) // 2) + 1       # two frames; the second is cut short
    cctx = zstandard.ZstdCompressor()
    second = cctx.compress(data[cut:])
    path.write_bytes(cctx.compress(data[:cut]) + second[: len(second) // 2])
    stats, quarantine = StackExchangeStats(), Quarantine()
    docs = {x["id"]: x["text"] for x in read_stackexchange(str(path), stats=stats, quarantine=quarantine)}
    assert quarantine.counts["corrupt_stream"] == 1 and quarantine.unreadable_bytes > 0  # the lost bytes counted
    assert docs and all(expected[k] == v for k, v in docs.items())       # what was read is exact
    # A cut gzip: the record holds the cut line and the bytes lost, as the JSONL reader's does (its
    # raw was empty and its detail named an exception class; found by a tester).
    gz = d / "Posts.xml.gz"
    whole = gzip.compress(data, mtime=0)
    gz.write_bytes(whole[: len(whole) * 3 // 4])
    quarantine = Quarantine()
    list(read_stackexchange(str(gz), quarantine=quarantine))
    record = [r for r in quarantine.records if r.reason == "corrupt_stream"][0]
    assert record.raw and data.find(record.raw) >= 0
    assert record.detail.endswith(f"; line cut at {len(record.raw):,} bytes") and not record.detail.startswith("Trunc")
    assert stats.kept == len(docs) and stats.removed["answer_missing"] + len(docs) == stats.questions_seen
    with pytest.raises(ValueError, match="extract"):
        list(read_stackexchange(str(tmp_path / "cooking.stackexchange.com.7z")))


def test_pass_one_reads_canonical_rows_without_xml_and_agrees(tmp_path, monkeypatch):
    """Pass 1's regex path gives the pairs the XML parser gives, and hands odd rows to the parser."""
    rows, _ = _corpus_posts(40, seed=5)
    rows += [
        "<row PostTypeId='1' Id='900' Score='9' AcceptedAnswerId='901' Title='Single quotes' "
        "Body='&lt;p&gt;q&lt;/p&gt;' />",
        '<row Id = "910" PostTypeId = "1" Score="9" AcceptedAnswerId="911" Title="Spaces" Body="b" />',
        '<row Body="he wrote Score=&quot;1&quot; Id=&quot;5&quot;" Title="Quoted" Score="7" Id="920" '
        'AcceptedAnswerId="921" PostTypeId="1" />',
        '<row Id="930" PostTypeId="1" Score="x9" AcceptedAnswerId="931" Title="Bad score" Body="b" />',
        '<row Id="940" PostTypeId="1" Score="9" AcceptedAnswerId="" Title="Empty accepted" Body="b" />',
        '<row Id="960" PostTypeId="01" Score="9" AcceptedAnswerId="961" Title="Leading zero" Body="b" />',
        '<row Id="970" PostTypeId="1" Score="9" AcceptedAnswerId = "971" Title="Spaced accepted" '
        'Body="x = \'it\'s\' PostTypeId=&quot;2&quot;" />',
        '<row Id="950" PostTypeId="2" ParentId="900" Score="9" Body="an answer" />',
    ]
    path = write_posts(tmp_path, rows)
    config = se.StackExchangeConfig()
    fast = se._candidates(str(path), config)
    calls = []
    monkeypatch.setattr(se, "_candidate_fields", lambda line, *_: calls.append(line) or None)
    slow = se._candidates(str(path), config)
    assert calls and len(fast[0]) > 10
    assert fast[0].tolist() == slow[0].tolist() and fast[1].tolist() == slow[1].tolist()
    for pair in ((901, 900), (911, 910), (921, 920), (961, 960), (971, 970)):
        assert pair in zip(*slow)


def test_a_malformed_question_cannot_take_another_questions_answer(tmp_path):
    """A broken row may claim an answer in pass 1; the answer still goes to the question it answers."""
    good_body = "<p>" + "How long do I rest dough? " * 3 + "</p>"
    rows = [
        '<row Id="1" PostTypeId="1" Score="9" AcceptedAnswerId="3" Title="Broken" Body="<p>unescaped</p>" />',
        question(2, 9, "Resting dough", good_body, accepted=3),
        answer(3, 2, 9, "<p>Rest it for an hour.</p>"),
    ]
    path = write_posts(tmp_path, rows)
    stats, quarantine = StackExchangeStats(), Quarantine()
    docs = list(read_stackexchange(str(path), stats=stats, quarantine=quarantine))
    assert quarantine.counts["malformed_xml"] == 1
    assert [d["id"] for d in docs] == ["se-cooking.stackexchange.com-2"] and "an hour" in docs[0]["text"]


def test_numbers_are_read_only_as_the_dump_writes_them(tmp_path):
    """An optional '-' and ASCII digits: `int()`'s other spellings are quarantined, not guessed at."""
    rows = [question(1, 9, "Good", "<p>q</p>", accepted=2), answer(2, 1, 9, "<p>a</p>")]
    for k, score in enumerate(["1_0", "+5", " 5", "\u0665", "5 ", "0x5"]):
        qid = 10 + 2 * k
        rows += [question(qid, score, f"Score {score!r}", "<p>q</p>", accepted=qid + 1),
                 answer(qid + 1, qid, 9, "<p>a</p>")]
    rows += [question(30, 9, "Answer scored 1_0", "<p>q</p>", accepted=31), answer(31, 30, "1_0", "<p>a</p>"),
             question(32, -1, "Negative", "<p>q</p>", accepted=33), answer(33, 32, 9, "<p>a</p>")]
    path = write_posts(tmp_path, rows)
    stats, quarantine = StackExchangeStats(), Quarantine()
    docs = list(read_stackexchange(str(path), stats=stats, quarantine=quarantine))
    assert [d["metadata"]["question_id"] for d in docs] == [1]
    assert quarantine.counts == {"bad_score": 7}
    assert {r.line for r in quarantine.records} == {5, 7, 9, 11, 13, 15, 18}
    assert stats.removed == {"answer_missing": 1, "question_score<3": 1}
    stats.check_balance()


def test_ids_beyond_int64_are_quarantined_and_the_rest_is_read(tmp_path):
    """Ids live in int64 arrays and SQLite keys: a larger one is a bad row, not an OverflowError."""
    big, small = str(1 << 63), str(-(1 << 63) - 1)
    rows = [
        question(big, 9, "Huge id", "<p>q</p>", accepted=11),                       # 3 bad_id
        question(small, 9, "Huge negative id", "<p>q</p>", accepted=11),            # 4 bad_id
        question(12, 9, "Huge accepted", "<p>q</p>", accepted=big),                 # 5 bad_accepted_answer_id
        answer(big, 1, 9, "<p>huge answer id</p>"),                                 # 6 bad_id
        answer(13, big, 9, "<p>huge parent</p>"),                                   # 7 bad_parent_id
        question(1, 9, "Good", "<p>q</p>", accepted=2), answer(2, 1, 9, "<p>a</p>"),
        question(str((1 << 63) - 1), 9, "Largest int64 id", "<p>q</p>", accepted=3),
        answer(3, str((1 << 63) - 1), 9, "<p>a</p>"),
    ]
    path = write_posts(tmp_path, rows)
    stats, quarantine = StackExchangeStats(), Quarantine()
    docs = list(read_stackexchange(str(path), stats=stats, quarantine=quarantine))
    assert [d["metadata"]["question_id"] for d in docs] == [1, (1 << 63) - 1]
    assert [(r.line, r.reason) for r in quarantine.records] == [
        (3, "bad_id"), (4, "bad_id"), (5, "bad_accepted_answer_id"), (6, "bad_id"), (7, "bad_parent_id")]
    stats.check_balance()


def test_a_byte_order_mark_before_the_declaration_is_accepted(tmp_path):
    path = write_posts(tmp_path, [question(1, 9, "Good", "<p>q</p>", accepted=2), answer(2, 1, 9, "<p>a</p>")])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    stats, quarantine = StackExchangeStats(), Quarantine()
    docs = list(read_stackexchange(str(path), stats=stats, quarantine=quarantine))
    assert len(docs) == 1 and quarantine.total == 0 and stats.rows == 2
    assert list(se._iter_lines(str(path), (0, 10))) == [b'<?xml version="1.0" encoding="utf-8"?>']
    # only the file's first bytes: a mark further on is a line that is not a row
    path.write_bytes(path.read_bytes().replace(b"<posts>", b"\xef\xbb\xbf<posts>"))
    quarantine = Quarantine()
    assert len(list(read_stackexchange(str(path), quarantine=quarantine))) == 1
    assert [(r.line, r.reason) for r in quarantine.records] == [(2, "not_a_row")]


def test_rows_on_a_structure_line_are_quarantined_not_skipped(tmp_path):
    """A line starting with `<?xml` or `<posts>` was skipped as structure whatever followed it, so a
    whole Posts.xml on one line (as ElementTree writes one), or `<posts><row .../>`, lost its rows
    with no document, removal or quarantine record (found by a tester). Such a line is quarantined."""
    q, a = question(1, 9, "Good", "<p>q</p>", accepted=2).strip(), answer(2, 1, 9, "<p>a</p>").strip()
    path = tmp_path / "s" / "Posts.xml"
    path.parent.mkdir()
    for text, lines in ((f'<?xml version="1.0" encoding="utf-8"?><posts>{q}{a}</posts>', [1]),
                        (f'<?xml version="1.0" encoding="utf-8"?>\n<posts>{q}\n{a}\n</posts>\n', [2])):
        path.write_text(text, encoding="utf-8")
        stats, quarantine = StackExchangeStats(), Quarantine()
        assert list(read_stackexchange(str(path), stats=stats, quarantine=quarantine)) == []
        assert [(r.line, r.reason) for r in quarantine.records] == [(line, "malformed_xml") for line in lines]
        assert "shares its line with XML structure" in quarantine.records[0].detail
        stats.check_balance()
    # structure lines alone, and a comment, are still not rows
    path.write_text(posts_xml([q, a]).replace("<posts>", "<posts><!-- no rows here -->"), encoding="utf-8")
    quarantine = Quarantine()
    assert len(list(read_stackexchange(str(path), quarantine=quarantine))) == 1 and quarantine.total == 0


@pytest.mark.parametrize("suffix", ["", ".zst", ".gz"])
def test_a_posts_file_without_its_listed_size_stops_the_conversion(tmp_path, suffix):
    """Both passes caught any OSError as a broken stream: a Posts.xml shorter than the listing
    found (InputChangedError) became one `corrupt_stream` line and lost rows (found by a
    reviewer). Whole and ranged reads raise instead; the listed size converts as before."""
    from dolmino.errors import InputChangedError

    rows, _ = _corpus_posts(30, seed=5)
    data = posts_xml(rows).encode("utf-8")
    data = {"": data, ".zst": zstandard.ZstdCompressor().compress(data), ".gz": gzip.compress(data, mtime=0)}[suffix]
    d = tmp_path / "cooking.stackexchange.com"
    d.mkdir()
    path = d / f"Posts.xml{suffix}"
    path.write_bytes(data)
    whole = list(se.iter_stackexchange(str(path), size=len(data)))
    assert whole == list(se.iter_stackexchange(str(path)))
    for wrong in (len(data) + 9, len(data) - 9):
        quarantine = Quarantine()
        with pytest.raises(InputChangedError, match="where the listing found"):
            list(se.iter_stackexchange(str(path), quarantine=quarantine, size=wrong))
        assert not quarantine.counts
        with pytest.raises(InputChangedError):
            se.scan_keys(str(path), se.StackExchangeConfig(), size=wrong)
        if not suffix:
            with pytest.raises(InputChangedError):
                se.scan_keys(str(path), se.StackExchangeConfig(), (len(data) // 2, wrong), size=wrong)


@pytest.mark.parametrize("name", ["Posts.XML", "Posts.xml.GZ", "Posts.XML.ZST", "Posts.xml.Zstd"])
def test_a_name_the_listing_reads_case_blind_is_one_the_reader_reads(tmp_path, name):
    """The listing takes Posts.XML (inputs.readable_by_name lowers the name); the reader refused it
    in the executors, a worker traceback on one line (found by a tester)."""
    from dolmino.build.inputs import readable_by_name

    rows, expected = _corpus_posts(6, seed=7)
    data = posts_xml(rows).encode("utf-8")
    lowered = name.lower()
    packed = (gzip.compress(data) if lowered.endswith(".gz") else
              zstandard.ZstdCompressor().compress(data) if lowered.endswith((".zst", ".zstd")) else data)
    d = tmp_path / "cooking.stackexchange.com"
    d.mkdir()
    (d / name).write_bytes(packed)
    assert readable_by_name(str(d / name), "stackexchange")
    assert {x["id"]: x["text"] for x in read_stackexchange(str(d / name))} == expected


# ---------------------------------------------------------------------------- CLI paths


def _small_posts(tmp_path, bad: bool = False):
    rows = [question(1, 5, "Title", "<p>question</p>", accepted=2), answer(2, 1, 9, "<p>answer</p>")]
    if bad:
        rows.append('  <row Id="x9" PostTypeId="1" Score="5" Title="t" Body="b" />')
    return write_posts(tmp_path, rows)


def test_cli_refuses_an_output_that_is_an_input_or_the_other_output(tmp_path, capsys, monkeypatch):
    """`--out x --quarantine x` kept only the quarantine records (every document gone), and an
    --out naming the Posts.xml replaced it, exit 0 (found by a tester); links count too."""
    posts = _small_posts(tmp_path, bad=True)
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "old", "text": "kept"}\n')
    os.symlink(out, tmp_path / "link.jsonl")
    os.link(posts, tmp_path / "posts.jsonl")
    (tmp_path / "sub").mkdir()
    before = {p: p.read_bytes() for p in (posts, out)}
    monkeypatch.setattr(se, "read_stackexchange", lambda *a, **k: pytest.fail("read before its paths were checked"))
    for argv, message in (
        (["--out", str(tmp_path / "new.jsonl"), "--quarantine", str(tmp_path / "new.jsonl")], "--quarantine"),
        (["--out", str(out), "--quarantine", str(tmp_path / "link.jsonl")], "--quarantine"),
        (["--out", str(tmp_path / "posts.jsonl")], "--out"),
        (["--out", str(tmp_path / "x.jsonl"), "--quarantine", str(tmp_path / "sub" / ".." / "posts.jsonl")],
         "--quarantine"),
    ):
        assert se.main([str(posts), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"python -m filters.stackexchange: error: {message} "), err
        assert "is the same file as" in err
    assert {p: p.read_bytes() for p in (posts, out)} == before
    assert not (tmp_path / "new.jsonl").exists() and not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize("argv, message", [
    (["--quarantine", "{tmp}"], "--quarantine {tmp} is a directory"),
    (["--quarantine", "{tmp}/q.xml"], "--quarantine {tmp}/q.xml: unknown document file suffix"),
    (["--out", "{tmp}"], "--out {tmp} is a directory"),
    (["--out", "{tmp}/out.txt"], "--out {tmp}/out.txt: unknown document file suffix"),
    (["{tmp}/absent/Posts.xml"], "{tmp}/absent/Posts.xml: no such file"),
    (["{tmp}/Posts.txt"], "expected Posts.xml, .xml.gz or .xml.zst"),
])
def test_cli_checks_every_path_before_reading(tmp_path, capsys, argv, message):
    """A bad --quarantine failed after --out was written, as a traceback (found by a tester)."""
    posts = _small_posts(tmp_path)
    out = tmp_path / "out.jsonl"
    argv = [x.format(tmp=tmp_path) for x in argv]
    args = ([] if argv[0].startswith("-") else argv[:1]) or [str(posts)]
    args += ["--out", str(out), *(argv if argv[0].startswith("-") else [])]
    assert se.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(tmp=tmp_path) in err, err
    assert not out.exists()


def test_cli_writes_the_quarantine_every_run(tmp_path, capsys):
    """A rerun on a clean file left the earlier run's records in --quarantine while its summary said
    `quarantined: {}` (found by a tester)."""
    q = tmp_path / "q.jsonl"
    bad, clean = _small_posts(tmp_path / "bad", bad=True), _small_posts(tmp_path / "clean")
    assert se.main([str(bad), "--out", str(tmp_path / "a.jsonl"), "--quarantine", str(q)]) == 0
    assert json.loads(capsys.readouterr().out)["quarantined"] == {"bad_id": 1}
    assert [json.loads(line)["reason"] for line in q.read_text().splitlines()] == ["bad_id"]
    assert se.main([str(clean), "--out", str(tmp_path / "b.jsonl"), "--quarantine", str(q)]) == 0
    assert json.loads(capsys.readouterr().out)["quarantined"] == {}
    assert q.read_text() == ""


def test_a_posts_file_without_its_closing_line_is_one_truncated_file_record(tmp_path):
    """A Posts.xml cut short at a row boundary (an interrupted extraction or copy), or empty, read
    as complete: its rows after the cut were gone with no record, removal or message (found by a
    tester). The dump ends every Posts.xml with `</posts>`: without it the file gets one
    `truncated_file` quarantine record after its last line; a compressed stream that breaks keeps
    its one `corrupt_stream` record."""
    rows = [question(1, 9, "Good", "<p>q</p>", accepted=2), answer(2, 1, 9, "<p>a</p>"),
            question(3, 9, "Answer after the cut", "<p>q</p>", accepted=4), answer(4, 3, 9, "<p>a</p>")]
    complete = posts_xml(rows).encode("utf-8")
    cut = complete[:complete.index(b'  <row Id="4"')]
    for data, line in ((complete, None), (cut, 6), (cut + b"\n\n", 8), (b"", 1),
                       (b'<?xml version="1.0" encoding="utf-8"?>\n', 2)):
        path = tmp_path / "s.stackexchange.com" / "Posts.xml"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        stats, quarantine = StackExchangeStats(), Quarantine()
        docs = list(read_stackexchange(str(path), stats=stats, quarantine=quarantine))
        assert [(r.line, r.reason) for r in quarantine.records] == ([] if line is None else [(line, "truncated_file")])
        assert len(docs) == (2 if data == complete else 1 if data.startswith(cut) else 0)
        stats.check_balance()
        if line is not None:
            assert quarantine.records[0].detail.startswith("the file ends without the dump's closing </posts> line")
            assert stats.removed == ({"answer_missing": 1} if data.startswith(cut) else {})
    gz = tmp_path / "Posts.xml.gz"
    gz.write_bytes(gzip.compress(complete)[:-30])
    quarantine = Quarantine()
    list(read_stackexchange(str(gz), quarantine=quarantine))
    assert [r.reason for r in quarantine.records] == ["corrupt_stream"]
    gz.write_bytes(gzip.compress(complete))
    quarantine = Quarantine()
    assert len(list(read_stackexchange(str(gz), quarantine=quarantine))) == 2 and quarantine.total == 0


def test_a_site_directory_is_named_as_a_directory(tmp_path):
    """`python -m filters.stackexchange math.stackexchange.com` (the extracted site's directory) said
    "expected Posts.xml, .xml.gz or .xml.zst" (a tester)."""
    site = tmp_path / "math.stackexchange.com"
    site.mkdir()
    with pytest.raises(ValueError, match=r"math\.stackexchange\.com: a directory; give its Posts\.xml \("):
        list(read_stackexchange(str(site), stats=StackExchangeStats()))
