"""Input files, units and tasks: what a build reads, and how the work is cut.

A *unit* is the piece of input that one set of attribute files describes: a whole file or,
for a large uncompressed .jsonl or Posts.xml, a byte range [start, end). A line belongs to
the range in which it starts (as in Hadoop's TextInputFormat), so ranges tile a file without
cutting a document. Units are numbered in a fixed order (source, file name, start), so a rerun over
the same inputs finds the same units and reuses their finished attribute files.

A *task* groups consecutive units up to a target size in bytes: 20,000 small files become a
few dozen tasks instead of 20,000 (per-task overhead dominated the first stage), and one
50 GB .jsonl becomes many tasks instead of one.

Which files are documents is decided by name, so a stray README.txt in a source directory
is reported and skipped at listing time, not found broken an hour into the job:
`.jsonl` / `.json` / `.ndjson`, optionally compressed (`.gz`, `.zst`, `.zstd`); Stack
Exchange sources read `.xml` the same way. Only uncompressed files split into ranges
(a gzip or zstd stream can only be read from its start): plain .jsonl, and plain Posts.xml,
whose ranges the tag phase converts into Q&A documents with Spark stages
(`dolmino.build.stackexchange`); a Posts.xml.gz / .zst is one unit, converted in one task.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter

from dolmino.documents import DOCUMENT_STEMS
from dolmino.errors import BuildError
from dolmino.manifest import Manifest
from dolmino.source_paths import COMPRESSIONS, STACKEXCHANGE_STEMS, STEMS, readable_by_name, shown_path

# A unit covers at most this many bytes of an uncompressed file; larger files are split. The
# command line's defaults ("256M", "128M": K/M/B/T are powers of ten) are these numbers, so
# builds from the command line and from `build()` cut files alike.
DEFAULT_SPLIT_BYTES = 256_000_000
# A task reads about this many input bytes (several units when they are small).
DEFAULT_TASK_BYTES = 128_000_000


def suffixes_text(fmt: str) -> str:
    """The names a format's documents end in, as a user reads them: ".jsonl, .json or .ndjson,
    plain or with .gz, .zst or .zstd"."""
    stems = STEMS[fmt]
    listed = stems[0] if len(stems) == 1 else f"{', '.join(stems[:-1])} or {stems[-1]}"
    return f"{listed}, plain or with {', '.join(COMPRESSIONS[1:-1])} or {COMPRESSIONS[-1]}"


def splittable(name: str, fmt: str) -> bool:
    """Plain (uncompressed) files can be read from any byte offset: Dolma JSONL, and Stack
    Exchange Posts.xml (one row per line; `dolmino.build.stackexchange` converts the ranges)."""
    return name.lower().endswith(DOCUMENT_STEMS if fmt == "dolma" else STACKEXCHANGE_STEMS)


@dataclass(frozen=True)
class InputFile:
    source: str
    uri: str  # local path or s3:// URI, as executors open it
    name: str  # relative to the manifest's data_root: what `loc` and attribute paths use
    size: int
    version: str  # S3 ETag or local mtime: a changed file is tagged again
    format: str = "dolma"


@dataclass(frozen=True)
class Unit:
    """One attribute file's worth of input: a whole file, or the lines starting in [start, end)."""

    index: int
    source_index: int
    file: InputFile
    start: int = 0
    end: int | None = None

    @property
    def is_range(self) -> bool:
        return self.end is not None

    @property
    def size(self) -> int:
        return (self.file.size if self.end is None else self.end) - self.start

    @property
    def key(self) -> str:
        """The unit's attribute file stem: its input name, plus the range when it is one."""
        if self.end is None:
            return self.file.name
        return f"{self.file.name}@{self.start:013d}-{self.end:013d}"


def _input_file(source: str, uri: str, name: str, size: int, version: str, fmt: str) -> InputFile:
    """InputFile(...) without the frozen dataclass's __init__, which sets each field through
    object.__setattr__ (twice the cost): the listing and each tag task's unpickling (`Units`) make
    one per input file, 20,000 of them for as many small files. InputFile has no __post_init__."""
    made = object.__new__(InputFile)
    made.__dict__.update(source=source, uri=uri, name=name, size=size, version=version, format=fmt)
    return made


class Units(tuple):
    """A bundle's units (`dolmino.build.attributes.plan_bundles`): a tuple that pickles as columns.

    Spark ships each task's bundles pickled (`dolmino.build.spark.parallelize_pickled`). Unit by
    unit, the 20,000 units of as many small files took 3.9 MB (every unit's and file's field
    names, a path repeating the data root before each name), 0.07 s to dump on the driver and
    0.08-0.1 s to load in the task; as columns, each file's path a shared head before its name,
    1.7 MB, 0.03 s to dump and to load (the collector paused: `dolmino.build.spark._unpickled`).
    What a task loads is a plain tuple of equal units, as before."""

    __slots__ = ()

    def __reduce__(self):
        place: dict[int, int] = {}  # id(file) -> its row in the file columns
        files: list[InputFile] = []
        for unit in self:
            if id(unit.file) not in place:
                place[id(unit.file)] = len(files)
                files.append(unit.file)
        shared: dict[str, str] = {}  # one string per head, which the pickle writes once
        heads: list[str] | None = []
        for f in files:
            if not f.uri.endswith(f.name):  # a path the listing did not name: every path in full
                heads = None
                break
            head = f.uri[:len(f.uri) - len(f.name)]
            heads.append(shared.setdefault(head, head))
        return _units_from_columns, (
            [u.index for u in self], [u.source_index for u in self], [place[id(u.file)] for u in self],
            [u.start for u in self], [u.end for u in self], [f.source for f in files],
            [f.uri for f in files] if heads is None else heads, heads is not None, [f.name for f in files],
            [f.size for f in files], [f.version for f in files], [f.format for f in files])


def _units_from_columns(indexes, source_indexes, places, starts, ends, sources, paths, headed, names, sizes,
                        versions, formats) -> tuple[Unit, ...]:
    """`Units.__reduce__`'s columns as the units again (`paths`: each file's uri, or where `headed`
    the head before its name); each Unit made as `_input_file` makes an InputFile."""
    if headed:
        paths = [head + name for head, name in zip(paths, names)]
    files = [_input_file(*fields) for fields in zip(sources, paths, names, sizes, versions, formats)]
    units = []
    for index, source_index, place, start, end in zip(indexes, source_indexes, places, starts, ends, strict=True):
        unit = object.__new__(Unit)
        unit.__dict__.update(index=index, source_index=source_index, file=files[place], start=start, end=end)
        units.append(unit)
    return tuple(units)


def _root_prefix(root: str | None) -> str:
    """What `_relative_name` takes off a path under the data root: the root and one '/' ('' for none)."""
    return root.rstrip("/") + "/" if root else ""


def _relative_name(path: str, prefix: str) -> str:
    """A path's name: relative to the data root (`prefix`: `_root_prefix`, computed once for a
    source's files), else the path without its leading '/'."""
    if prefix and path.startswith(prefix):
        return path[len(prefix):]
    return path.lstrip("/")


class _Spellings:
    """One entry per file however its path is spelled: a name reached through several directory
    paths (symlinked directories: a `loop -> .` link gave the same file under web/loop/loop/...
    forty times, each read as another input; `//`, `..`; found by testers) is kept once, under
    its shortest path. Names are not merged: a symlinked or hard-linked file under a name of its
    own is a file of its own, as a listing shows it. s3:// keys are compared as written."""

    def __init__(self):
        self.real_dirs: dict[str, str] = {}  # each directory resolved once
        self.kept: dict[str, tuple[str, object]] = {}  # key -> (shortest path, its value)

    def key(self, path: str) -> str:
        if path.startswith("s3://"):
            return path
        # str.rpartition, not os.path.split/join: a third of listing 20,000 local files went there.
        parent, _, name = path.rpartition("/")
        if not parent and path.startswith("/"):
            parent = "/"
        real = self.real_dirs.get(parent)
        if real is None:
            real = self.real_dirs[parent] = os.path.realpath(parent)
        if real.endswith("/"):
            return real + name
        return path if real == parent else f"{real}/{name}"  # a resolved directory's path is its own key

    def keep(self, key: str, path: str, value) -> None:
        """Keep `path` and its value under `key` (its `key`) unless a shorter spelling is kept: the
        key is computed once per file (`_regular`), and a source's listing keeps its files by the
        same keys across its patterns (`_list_source`)."""
        seen = self.kept.get(key)
        if seen is None or (len(path), path) < (len(seen[0]), seen[0]):
            self.kept[key] = (path, value)


def _regular(paths, broken: list[tuple[str, str]] | None = None) -> list[tuple[str, os.stat_result, str]]:
    """(path, stat, spelling key) of the regular files among `paths`, sorted, each file once
    (`_Spellings`): one stat call each. A name that exists but cannot be followed (a link leading
    nowhere or in a loop; a git-annex file never fetched) goes to `broken` with why: it was left
    out unsaid, its documents lost (found by a tester). Each such name goes there once too, under
    its shortest spelling: beside a `loop -> .` directory link, 4 dangling links were "164 input
    file(s) cannot be read", each counted once per web/loop/loop/... path (found by a tester)."""
    found, unreadable = _Spellings(), _Spellings()
    key, keep, is_regular = found.key, found.keep, stat.S_ISREG  # looked up once: 20,000 small files
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as exc:
            if broken is not None and os.path.islink(p) and not _readable_elsewhere(p):
                unreadable.keep(key(p), p, exc.strerror or type(exc).__name__)
            continue
        if is_regular(st.st_mode):
            keep(key(p), p, st)
    if broken is not None:
        broken += sorted(unreadable.kept.values())
    return sorted(((path, st, k) for k, (path, st) in found.kept.items()), key=itemgetter(0))


def _readable_elsewhere(path: str) -> bool:
    """A link that fails only through the path to it: a `loop -> .` directory link gives
    web/loop/loop/.../z.jsonl until the kernel's limit on links, and z.jsonl, itself a link,
    is read under its shortest spelling (`_Spellings`). Its real directory's name resolves."""
    parent, _, name = path.rpartition("/")
    try:
        os.stat(os.path.join(os.path.realpath(parent or "."), name))
    except OSError:
        return False
    return True


def _expand_local_stat(pattern: str, broken: list[tuple[str, str]] | None = None
                       ) -> tuple[list[tuple[str, os.stat_result, str]], bool]:
    if any(ch in pattern for ch in "*?["):
        return _regular(glob.glob(pattern, recursive=True), broken), True
    if os.path.isdir(pattern):
        return _regular((p for p in glob.glob(os.path.join(pattern, "**", "*"), recursive=True)
                         if not os.path.basename(p).startswith(".")), broken), False
    return _regular([pattern], broken), True


def expand_local(pattern: str) -> tuple[list[str], bool]:
    """(sorted files a local glob, directory or file names; whether the pattern named files explicitly).

    A directory expands to every file below it except hidden ones; globs follow
    glob.glob(recursive=True), whose semantics `dolmino.s3.expand_uri_glob` copies."""
    found, explicit = _expand_local_stat(pattern)
    return [p for p, _, _ in found], explicit


def _list_local(pattern: str, fmt: str, skipped: list[str]
                ) -> tuple[list[tuple[str, int, str, str]], list[str], list[tuple[str, str]]]:
    """(path, size, version, spelling key) of matching document files, explicit matches that are
    not documents, and documents by name that cannot be read (path, why)."""
    broken: list[tuple[str, str]] = []
    paths, explicit = _expand_local_stat(pattern, broken)
    found, refused = [], []
    for path, st, key in paths:
        if readable_by_name(path, fmt):
            found.append((path, st.st_size, str(st.st_mtime_ns), key))
        elif explicit:
            refused.append(path)
        else:
            skipped.append(path)
    skipped += [path for path, _ in broken if not readable_by_name(path, fmt)]
    return found, refused, [(path, why) for path, why in broken if readable_by_name(path, fmt)]


def _list_s3(pattern: str, fmt: str, skipped: list[str]
             ) -> tuple[list[tuple[str, int, str, str]], list[str], list[tuple[str, str]]]:
    from dolmino.s3 import list_objects

    explicit = any(ch in pattern for ch in "*?[")
    found, refused = [], []
    for obj in list_objects(pattern):
        if readable_by_name(obj.uri, fmt):
            found.append((obj.uri, obj.size, obj.etag, obj.uri))  # an s3:// key is its own spelling key
        elif explicit or obj.uri == pattern:
            refused.append(obj.uri)
        else:
            skipped.append(obj.uri)
    return found, refused, []  # an object is there or not: no links


@dataclass
class Listing:
    files: list[list[InputFile]]  # per source, in manifest order
    skipped: list[str]  # files in source directories that are not documents by name
    warnings: list[str] = field(default_factory=list)  # what the listing saw that the build may be missing

    @property
    def total_bytes(self) -> int:
        return sum(f.size for files in self.files for f in files)


# An attribute file is named "<input name>[@<range>].<version>.parquet[.tmp<pid>]" (up to 58 bytes
# more than the input's own name), and a file name holds 255 bytes: a longer input name failed in
# the middle of the tag stage with a Spark traceback (found by a tester).
MAX_NAME_BYTES = 190


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes the file system gave that are not UTF-8 (os.fsdecode's surrogates)
        return False
    return True


def _name_too_long(name: str) -> int | None:
    size = len(name.rsplit("/", 1)[-1].encode("utf-8", "surrogateescape"))
    return size if size > MAX_NAME_BYTES else None


def shared_inputs(per_source: list[tuple[str, dict[str, tuple]]]) -> str | None:
    """The problem of files that more than one source lists (`per_source`: each source's files,
    spelling key (`_Spellings.key`) -> (path, ...) as `_Spellings.kept` holds them), or None."""
    keys = [files.keys() for _, files in per_source]
    if len(keys) < 2 or len(set().union(*keys)) == sum(map(len, keys)):  # no key in two sources: one pass in C
        return None
    owners: dict[str, tuple[str, list[str]]] = {}
    for name, files in per_source:
        for key, (uri, _) in files.items():
            owners.setdefault(key, (uri, []))[1].append(name)
    shared = [held for held in owners.values() if len(held[1]) > 1]
    if not shared:  # read, counted and mixed once per source, unsaid (found by a tester)
        return None
    uri, names = shared[0]
    return (f"{len(shared)} input file(s) matched by more than one source (first: {shown_path(uri)}, by "
            f"{', '.join(repr(n) for n in names)}): each would be read and mixed once per source; "
            "narrow the sources' paths so that a file is one source's (passes weight a source)")


@dataclass
class SourceFiles:
    """One source's listing: its files (by name), or what keeps the build from reading them."""

    name: str
    files: list[InputFile]
    problems: list[str]  # each names the source; the build refuses a listing with any
    failure: str | None = None  # the listing itself failed (`list_sources`' `failure_message`)
    warnings: list[str] = field(default_factory=list)  # each names the source; the build goes on

    @property
    def unmatched(self) -> bool:
        """Nothing matched any of its patterns (and nothing else is wrong). A source of which one
        pattern matched files and another none is not: `dolmino plan` said "no files match for
        any source" of it (found by a reviewer); the build refuses the pattern, as plan says."""
        return not self.files and bool(self.problems) and all(NO_MATCH in p for p in self.problems)


@dataclass
class SourcesListing:
    """Every source's `SourceFiles`, and the problems of the listing as a whole: a data root it
    refuses (then no source is listed), files that more than one source matches."""

    sources: list[SourceFiles]
    problems: list[str]
    skipped: list[str]  # files in source directories that are not documents by name

    def all_problems(self) -> list[str]:
        return [p for s in self.sources for p in s.problems] + self.problems

    def all_warnings(self) -> list[str]:
        return [w for s in self.sources for w in s.warnings]


NO_MATCH = "no input files match"

# `dolmino synth` output (dolmino/synth/runner.py): part files, a done-file per finished
# partition, and the report written last. Parts without the report are a run that was
# interrupted or left partitions unanswered; a build took them as the whole source, one seed's
# parts beside another's (found by a tester).
SYNTH_PART = re.compile(r"part-\d{5}\.jsonl\.zst$")
SYNTH_REPORT = "synth-report.json"


def unfinished_synth(uris) -> list[str]:
    """The directories among `uris`' parents that hold `dolmino synth` parts and done-files but
    no synth-report.json. Looked at only where a part is named as synth names them: one local
    glob, or one S3 listing, per such directory."""
    parents: set[str] = set()
    for uri in uris:
        parent, _, name = uri.rpartition("/")
        # The name alone holds any match (the pattern has no '/'); a directory already found is not searched again.
        if parent not in parents and SYNTH_PART.search(name):
            parents.add(parent)
    found = []
    for parent in sorted(parents):
        if parent.startswith("s3://"):
            from dolmino.s3 import list_objects

            started = bool(list_objects(f"{parent}/part-*.done.json"))
            finished = bool(started and list_objects(f"{parent}/{SYNTH_REPORT}"))
        else:
            started = bool(glob.glob(os.path.join(glob.escape(parent), "part-*.done.json")))
            finished = os.path.isfile(os.path.join(parent, SYNTH_REPORT))
        if started and not finished:
            found.append(parent)
    return found


# The Stack Exchange dump is one .7z archive per site (stackoverflow.com's split by table:
# stackoverflow.com-Posts.7z, -Users.7z, ...), which the build cannot read: each site's
# Posts.xml is extracted first. A site left unextracted matched no pattern and was simply not in
# the build, unsaid.
_SE_ARCHIVE = re.compile(r"(?i)(.+?)(-(posts|users|votes|comments|badges|posthistory|postlinks|tags))?\.7z$")


def _glob_base(location: str) -> str:
    """The directory a pattern starts in: above its first glob character, or the path itself."""
    cut = min((location.find(ch) for ch in "*?[" if ch in location), default=-1)
    if cut >= 0:
        return location[:cut].rsplit("/", 1)[0] if "/" in location[:cut] else "."
    if location.startswith("s3://") or not os.path.isdir(location):
        return location.rsplit("/", 1)[0] if "/" in location else "."
    return location.rstrip("/") or "/"


def unextracted_archives(location: str, matched: list[str]) -> list[str]:
    """The dump's per-site .7z archives below `location`'s directory whose site no matched
    Posts.xml belongs to (`filters.stackexchange.site_of`), sorted."""
    from filters.stackexchange import site_of

    base = _glob_base(location)
    if base in ("/", ".") or base.rstrip("/").count("/") < 3 and base.startswith("s3://"):
        return []  # not a dump's directory: a walk of a whole file system or bucket
    if base.startswith("s3://"):
        from dolmino.s3 import list_objects

        archives = [obj.uri for obj in list_objects(f"{base}/**/*.7z")]
    else:
        archives = glob.glob(os.path.join(glob.escape(base), "**", "*.7z"), recursive=True)
    sites = {site_of(uri) for uri in matched}
    left = []
    for uri in archives:
        m = _SE_ARCHIVE.match(uri.rsplit("/", 1)[-1])
        if m and (m.group(3) is None or m.group(3).lower() == "posts") and m.group(1) not in sites:
            left.append(uri)
    return sorted(left)


def _bracket_hint(pattern: str, location: str) -> str:
    """Why a local pattern that matched nothing may have meant a name that exists: glob reads `[1]` as a
    character class, so `web[1]/*.jsonl` looked in web1/ while web[1]/ held the data (found by a tester)."""
    if location.startswith("s3://"):
        return ""
    parts = location.split("/")
    for i, part in enumerate(parts):
        if "[" in part and os.path.exists("/".join(parts[:i + 1])):
            escaped = part.replace("[", "[[]")
            return (f" ({'/'.join(parts[:i + 1])!r} exists, but '[' opens a character class in a pattern: "
                    f"write {escaped!r}, as in {pattern.replace(part, escaped)!r})")
    return ""


def _list_source(manifest: Manifest, source, skipped: list[str]) -> tuple[SourceFiles, dict[str, tuple]]:
    """One source's files and problems, and its files by spelling key (`shared_inputs`)."""
    found = _Spellings()
    problems, warnings = [], []
    for pattern in source.paths:
        location = manifest.resolve(pattern)
        if location.startswith("s3://") and not _is_utf8(location):  # no S3 key holds it; botocore raised
            problems.append(f"source {source.name!r}: '{shown_path(location)}' is not UTF-8, which S3 keys are")
            continue
        lister = _list_s3 if location.startswith("s3://") else _list_local
        skipped_before = len(skipped)
        matched, refused, broken = lister(location, source.format, skipped)
        if broken:
            path, why = min(broken)
            problems.append(f"source {source.name!r}: {len(broken)} input file(s) cannot be read (first: "
                            f"{shown_path(path)}: {why}; a link leading nowhere, or a file whose content was never "
                            "fetched?); fetch or remove them")
        if refused:
            shown = ", ".join(map(shown_path, refused[:3])) + (", ..." if len(refused) > 3 else "")
            problems.append(f"source {source.name!r}: {location!r} matches {len(refused)} file(s) that are not "
                            f"{source.format} documents by name ({shown}); documents end in "
                            f"{suffixes_text(source.format)}")
        if not matched and not refused and not broken and (others := skipped[skipped_before:]):
            # A directory of Parquet or .jsonl.bz2 files read "no input files match" it, and "point
            # the data root at your copy of the data": it is their copy (found by a tester).
            shown = ", ".join(map(shown_path, others[:3])) + (", ..." if len(others) > 3 else "")
            problems.append(f"source {source.name!r}: {location!r} holds no {source.format} documents by name, only "
                            f"{len(others)} other file(s) ({shown}); documents end in {suffixes_text(source.format)}")
        elif not matched and not refused and not broken:
            problems.append(f"source {source.name!r}: {NO_MATCH} {location!r}{_bracket_hint(pattern, location)}")
        for uri, size, version, key in matched:
            found.keep(key, uri, (size, version))
        if source.format == "stackexchange" and (archives := unextracted_archives(location, [m[0] for m in matched])):
            more = f" and {len(archives) - 1} more" if len(archives) > 1 else ""
            warnings.append(f"source {source.name!r}: {len(archives)} Stack Exchange .7z archive(s) below "
                            f"{shown_path(_glob_base(location))!r} have no extracted Posts.xml among the files "
                            f"{shown_path(location)!r} matches ({shown_path(archives[0])}{more}): their sites are "
                            "not in this build; extract each site's Posts.xml as <site>/Posts.xml (README 'Real "
                            "data'), unless left out on purpose")
    # One pass over the files: the name of each, and the rules below that look at it one file at a time.
    prefix = _root_prefix(manifest.data_root)
    listed, paths, names, dotted, undecodable, long = [], [], [], [], [], []
    for uri, (size, version) in found.kept.values():
        name = _relative_name(uri, prefix)
        listed.append(_input_file(source.name, uri, name, size, version, source.format))
        paths.append(uri)
        names.append(name)
        if ".." in name and ".." in name.split("/"):
            dotted.append(uri)
        if not uri.isascii() or len(uri) > MAX_NAME_BYTES:  # a short ASCII path is UTF-8, and short: skip both
            if not _is_utf8(name):
                undecodable.append(uri)
            if n := _name_too_long(uri):
                long.append((uri, n))
    if dotted:  # the name keys attribute files and `loc`: a `..` in it left its directory (a reviewer)
        dotted.sort()
        problems.append(f"source {source.name!r}: {len(dotted)} input path(s) go through '..' (first: "
                        f"{shown_path(dotted[0])}); write them without '..' (or under the data root)")
    if undecodable:
        # it names the documents (`loc`) and their attribute files: the build failed with a traceback (a tester)
        undecodable.sort()
        problems.append(f"source {source.name!r}: {len(undecodable)} input file name(s) are not UTF-8 (first: "
                        f"{shown_path(undecodable[0])}); rename them")
    if long:
        problems.append(f"source {source.name!r}: {len(long)} input file name(s) longer than {MAX_NAME_BYTES} "
                        f"bytes, which its attribute files cannot be named after (first: {shown_path(long[0][0])}, "
                        f"{long[0][1]} bytes); rename them")
    if len(set(names)) < len(names):
        named: dict[str, list[str]] = {}
        for f in listed:
            named.setdefault(f.name, []).append(f.uri)
        shared = sorted(sorted(uris) for uris in named.values() if len(uris) > 1)
        # A path outside the data root is named without its leading '/': /mnt/a.jsonl and
        # <root>/mnt/a.jsonl shared their documents' `loc`, sampling hashes and attribute files (a reviewer).
        problems.append(f"source {source.name!r}: {len(shared)} name(s) given to more than one input file (first: "
                        f"{' and '.join(map(shown_path, shared[0]))}, both named "
                        f"{_relative_name(shared[0][0], prefix)!r}); the name keys their documents and "
                        "attribute files: move one of them, or list the one outside the data root from elsewhere")
    if unfinished := unfinished_synth(paths):
        more = f" (and {len(unfinished) - 1} more)" if len(unfinished) > 1 else ""
        problems.append(f"source {source.name!r}: {shown_path(unfinished[0])}{more} holds `dolmino synth` parts "
                        f"without its {SYNTH_REPORT} (a run interrupted, or with partitions unanswered); rerun the "
                        "synth command to finish it")
    return SourceFiles(source.name, sorted(listed, key=attrgetter("name")), problems, warnings=warnings), found.kept


def list_sources(manifest: Manifest, failure_message=None) -> SourcesListing:
    """Every source's files and problems, the build's listing rules one source at a time and
    across sources. `dolmino plan` and `dolmino lock` report what it finds per source; the build
    (`list_inputs`) refuses any problem. `failure_message(exc)`: a source whose listing raises
    gets that message as its `failure` instead (plan: S3 not reachable); None re-raises."""
    skipped: list[str] = []
    relative = any(not (p.startswith("s3://") or os.path.isabs(p)) for src in manifest.sources for p in src.paths)
    if relative and any(ch in (manifest.data_root or "") for ch in "*?["):
        # Joined with a source's paths it would be read as a pattern: /data[1] matched /data1 (found by a tester).
        return SourcesListing([], [f"data root {manifest.data_root!r} holds glob characters (* ? [), which the "
                                   "listing would read as a pattern; rename the directory (or link it under a "
                                   "plain name)"], skipped)
    sources: list[SourceFiles] = []
    # Across patterns and sources too: their spellings of one file were told apart (a reviewer).
    per_source: list[tuple[str, dict[str, tuple]]] = []  # name, `_Spellings.kept`
    for source in manifest.sources:
        try:
            listed, keys = _list_source(manifest, source, skipped)
        except Exception as exc:
            message = failure_message(exc) if failure_message is not None else None
            if message is None:
                raise
            sources.append(SourceFiles(source.name, [], [], message))
            continue
        sources.append(listed)
        per_source.append((source.name, keys))
    shared = shared_inputs(per_source)
    return SourcesListing(sources, [shared] if shared else [], skipped)


def _root_origin(manifest: Manifest) -> str:
    """Where a manifest's data root comes from, as the listing's hint words it."""
    if manifest.path and manifest.raw.get("data_root") is None and manifest.data_root == os.path.dirname(manifest.path):
        return "the manifest's own directory (it states no data_root)"
    return "the manifest's data_root"


def _missing_root(root: str | None) -> str:
    """", which does not exist" for a local data root that is not there: every source's "no input
    files match" left the reader to find out that the root was the cause (a tester)."""
    if not root or root.startswith("s3://") or os.path.exists(root):
        return ""
    return ", which does not exist"


def no_match_hint(manifest: Manifest, problems: list[str]) -> str:
    """Where `problems` say a pattern matches nothing: where relative paths resolve and whether that
    root exists (the build's and the lock's errors; `dolmino lock` said only "no input files match"
    for a data root that does not exist, found by a tester). Where the data root came from is not
    known here (the manifest's data_root, or a command's --data-root replacing it): the hint names
    the root, not its origin."""
    if not any(NO_MATCH in p for p in problems):
        return ""
    return ("\n  (relative paths resolve against the data root"
            f"{' ' + repr(manifest.data_root) if manifest.data_root else ' (none: the current directory)'}"
            f"{_missing_root(manifest.data_root)}, "
            f"{_root_origin(manifest)} unless --data-root replaces it: point it at your copy of the data, "
            "see README 'Real data')")


def list_inputs(manifest: Manifest, listing: SourcesListing | None = None) -> Listing:
    """Every source's input files; one BuildError naming every problem at once. `listing`: the
    sources as `list_sources` listed them, where the caller has (a --locked build's lock check)."""
    listing = list_sources(manifest) if listing is None else listing
    if problems := listing.all_problems():
        # ";" ends each problem: the command line prints an error on one line.
        raise BuildError("input listing failed:\n  " + ";\n  ".join(problems) + no_match_hint(manifest, problems))
    return Listing([s.files for s in listing.sources], listing.skipped, listing.all_warnings())


def plan_units(listing: Listing, split_bytes: int = DEFAULT_SPLIT_BYTES) -> list[Unit]:
    """Units in a fixed order; large uncompressed files become byte ranges of ~split_bytes."""
    if split_bytes < 1:
        raise BuildError(f"split size must be positive, got {split_bytes}")
    units: list[Unit] = []
    for si, files in enumerate(listing.files):
        for f in files:
            if splittable(f.name, f.format) and f.size > split_bytes:
                pieces = -(-f.size // split_bytes)
                step = -(-f.size // pieces)
                for start in range(0, f.size, step):
                    units.append(Unit(len(units), si, f, start, min(f.size, start + step)))
            else:
                units.append(Unit(len(units), si, f))
    return units


def group_tasks(units: list, task_bytes: int = DEFAULT_TASK_BYTES) -> list[tuple]:
    """Consecutive units (or attribute bundles: anything with a `size`), packed up to
    `task_bytes` each (a larger one is a task of its own)."""
    tasks: list[tuple] = []
    current: list = []
    size = 0
    for unit in units:
        if current and size + unit.size > task_bytes:
            tasks.append(tuple(current))
            current, size = [], 0
        current.append(unit)
        size += max(unit.size, 1)
    if current:
        tasks.append(tuple(current))
    return tasks
