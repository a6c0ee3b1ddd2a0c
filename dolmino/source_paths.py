"""What a source's `paths` take, told from the names and patterns alone, before anything is listed.

Which files are documents is decided by name (`readable_by_name`: `.jsonl` / `.json` / `.ndjson`, or a
Stack Exchange source's `.xml`, plain or compressed), and the build's listing (`dolmino.build.inputs`)
takes a source's files so. `overlapping_paths` says from the patterns which two sources would take the
same files, as the listing's `shared_inputs` says it of the files found: `dolmino manifest check` says
it offline, below the build (a manifest check imports no build stage).
"""

from __future__ import annotations

import fnmatch

from dolmino.documents import DOCUMENT_STEMS
from dolmino.manifest import Manifest

COMPRESSIONS = ("", ".gz", ".zst", ".zstd")
STACKEXCHANGE_STEMS = (".xml",)


def _suffixes(stems: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(stem + comp for stem in stems for comp in COMPRESSIONS)


SUFFIXES = {"dolma": _suffixes(DOCUMENT_STEMS), "stackexchange": _suffixes(STACKEXCHANGE_STEMS)}
STEMS = {"dolma": DOCUMENT_STEMS, "stackexchange": STACKEXCHANGE_STEMS}


def readable_by_name(name: str, fmt: str) -> bool:
    return name.lower().endswith(SUFFIXES[fmt])


def shown_path(path: str) -> str:
    """A path as a message can print it: bytes that are not UTF-8 as \\xNN."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _tree(location: str) -> str | None:
    """The directory under which `location` takes every document file, or None: a path without glob
    characters (a directory, or the file itself), or one ending in `/**` or `/**/*` (glob's recursive
    walk). A directory's hidden names are not taken (the listing's `_expand_local_stat`), nor by glob's `*`."""
    for tail in ("/**/*", "/**", ""):
        base = location[:len(location) - len(tail)] if location.endswith(tail) else None
        if base and not any(ch in base for ch in "*?["):
            return base.rstrip("/") or "/"
    return None


def _under(path: str, tree: str) -> bool:
    """`path` is `tree` or lies below it, through no hidden name (which a directory's listing leaves out)."""
    if path == tree:
        return True
    below = path[len(tree.rstrip("/")) + 1:] if path.startswith(tree.rstrip("/") + "/") else None
    return bool(below) and not any(part.startswith(".") for part in below.split("/"))


def _glob_matches(pattern: list[str], path: list[str]) -> bool:
    """Whether glob(recursive=True) takes `path` for `pattern` (both split at '/'): `**` is any number
    of directories, other parts match one name each, a leading '.' only where the pattern writes one."""
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_glob_matches(rest, path[i:]) for i in range(len(path) + 1)
                   if not any(p.startswith(".") for p in path[:i]))
    return bool(path) and fnmatch.fnmatchcase(path[0], head) and (head.startswith(".") or
                                                                   not path[0].startswith(".")) \
        and _glob_matches(rest, path[1:])


def _takes_all_of(outer: str, inner: str, fmt: str) -> str | None:
    """A file (or pattern) that `inner` names and `outer` takes too, where every file `inner` matches is
    one `outer` takes, or None where that is not certain from the patterns alone: `inner` inside
    `outer`'s tree (`_tree`; a glob by the directory above its first glob character), the same pattern,
    or a document file (by its name) that `outer`'s glob matches."""
    tree, inner_tree = _tree(outer), _tree(inner)
    if tree is not None:
        cut = min(inner.find(ch) for ch in "*?[" if ch in inner) if inner_tree is None else len(inner)
        base = inner_tree if inner_tree is not None else inner[:cut].rpartition("/")[0]
        if base and _under(base, tree) and (inner_tree is not None or _under(inner, tree)):
            return inner
    if inner == outer:
        return inner
    if inner_tree is not None and readable_by_name(inner, fmt) and _glob_matches(outer.split("/"), inner.split("/")):
        return inner
    return None


def overlapping_paths(manifest: Manifest) -> str | None:
    """Two sources whose paths name the same files, found from the patterns alone (no listing: what
    `dolmino manifest check` can say offline, as `shared_inputs` says it of a listing, which the build
    refuses): a pattern of one inside another's directory or `/**` tree, the same pattern twice, a
    document file that another's glob matches. A pattern matches some file (the build refuses one that
    matches none), so each case is a file both sources take; patterns that merely may meet are left to
    the listing. One line naming both sources and that file, or None."""
    resolved = [[manifest.resolve(p) for p in s.paths] for s in manifest.sources]
    for i, (a, paths_a) in enumerate(zip(manifest.sources, resolved)):
        for j in range(i + 1, len(manifest.sources)):
            b, paths_b = manifest.sources[j], resolved[j]
            if a.format != b.format:  # each takes only its own format's files by name
                continue
            for pa in paths_a:
                for pb in paths_b:
                    shared = _takes_all_of(pa, pb, a.format) or _takes_all_of(pb, pa, a.format)
                    if shared is not None:
                        # a pattern is the files it matches ("both take /data/web/**" read as a file of that name)
                        what = (f"every file {shown_path(shared)} matches" if any(ch in shared for ch in "*?[")
                                else shown_path(shared))
                        return (f"sources {a.name!r} and {b.name!r} both take {what} ({a.name}: "
                                f"{shown_path(pa)}, {b.name}: {shown_path(pb)}): each would read and mix it once per "
                                "source; narrow the paths so that a file is one source's (to take a source more "
                                "than once, raise its source_percent or mix_percent)")
    return None
