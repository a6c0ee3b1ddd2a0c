"""Lockfiles: pin the exact bytes a manifest builds from.

    dolmino lock MANIFEST               # writes MANIFEST.lock.json beside it (50B.json -> 50B.lock.json)
    dolmino lock MANIFEST --check       # exit 1 and name every file that drifted
    build_mix.py --manifest M --locked  # the build refuses to start on any drift

A manifest names inputs by glob and models by path; the same manifest can silently build
from different files. The lock records, per source, every input file the build's own listing
(`dolmino.build.inputs.list_inputs`) finds, by its name relative to the data root, with:

- **S3 objects**: size and ETag. S3 gives the ETag with the listing, so locking a pool of
  30,000 objects costs one listing; any re-upload changes it.
- **local files**: size, mtime and SHA-256 of the content. Hashing reads every byte (about
  0.5-1 GB/s per core: an hour for a few TB), so `--fast` records size and mtime only, for
  pools too large to hash. Checking is fast either way: a file whose size and mtime match
  the lock is taken as unchanged (git's and rsync's quick check); a file whose mtime moved
  is re-hashed and passes only if its SHA-256 still matches (a `--fast` lock cannot look,
  so any changed mtime is drift). `--rehash` re-hashes every file regardless.

Every model, index and directory a filter names (`*_path` parameters) is recorded with its
SHA-256 (directories: a digest of the relative names and file digests, local or s3://, the
same digest `dolmino.build.resources` ships to executors), keyed by where the manifest names
it, and the tokenizer with the SHA-256 of its JSON definition. The lock also records the
project version and the SHA-256 of the manifest's content for provenance; editing the
manifest's prose does not invalidate the lock, changing what it reads does.

A custom `"scorer": "module:callable"` (score_threshold) scores with Python code the lock
also pins: under "scorers", keyed by where the manifest names it, the scorer string, the
SHA-256 its attribute set is keyed by (`filters.quality.scorer_source`: the Python files
of the module's outermost package, or the module file alone, in a directory or a --py-files
zip alike) and a note of what was hashed (relative to the manifest, else a base name). An
edited scorer, one added or removed, or one whose source cannot be found any more is drift;
a scorer whose source cannot be found (a module made in memory) cannot be locked. Registered scorers
(fasttext_label_probability, ...) are dolmino's code and are not recorded. A lock made
before scorers were recorded (no "scorers") is read and checked as before, except that each
custom scorer of the manifest is drift ("not recorded"): that lock cannot vouch for the code
a --locked build would score with; lock again.

A locked build (`--locked`) copies the lock into its output as `manifest.lock.json`, beside
`manifest.json`, before the completion marker; releases upload every file of the build, so
a release carries it too. A build without `--locked` removes a stale one.

Names are relative to the data root, so a lock made against one copy of the data checks
another copy (`--data-root`) with the same files; a lock made from local files cannot vouch
for S3 objects (an ETag is not a SHA-256) and says so: lock again against that root.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from dolmino.argtypes import positive_int
from dolmino.checksums import sha256_file
from dolmino.errors import BuildError, ManifestError
from dolmino.manifest import Manifest, resolve_relative, expand_home, load_named_manifest
from dolmino.py_files import PY_FILES_HELP, explained, import_py_files, py_files
from dolmino.s3 import local_path

if TYPE_CHECKING:
    from dolmino.build.inputs import SourcesListing

LOCK_FORMAT = "dolmino-lock/1"
BUILD_LOCK_NAME = "manifest.lock.json"  # the lock's name inside a build output and a release
# Problems shown in a BuildError before "... and N more".
SHOWN_PROBLEMS = 25


def lock_path_for(manifest_path: str) -> str:
    """manifests/50B.json -> manifests/50B.lock.json."""
    stem = manifest_path[:-5] if manifest_path.endswith(".json") else manifest_path
    return stem + ".lock.json"


def project_version() -> str:
    """The installed dolmino's version, else the checkout's pyproject.toml's."""
    try:
        from importlib.metadata import version

        return version("dolmino")
    except Exception:  # noqa: BLE001 - not installed: read the checkout
        import tomllib

        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
        try:
            with open(path, "rb") as fh:
                return str(tomllib.load(fh)["project"]["version"])
        except (OSError, KeyError, ValueError):
            return "unknown"


def _manifest_digest(manifest: Manifest, **replaced) -> str:
    return hashlib.sha256(json.dumps({**manifest.raw, **replaced}, sort_keys=True).encode("utf-8")).hexdigest()


def _lock_is_for(locked: dict, manifest: Manifest) -> bool:
    """Whether the lock's "manifest" entry is this manifest's: the same name, or the same content under
    another name (a manifest renamed after it was locked was "the lock is for manifest 'x'", drift, though
    the lock pins every byte it reads). A path cannot say (a clone, a release, a moved file), nor can
    the content alone: an edit since the lock is `manifest_note`'s note, not drift."""
    if locked.get("name") == manifest.name:
        return True
    name = locked.get("name")
    return isinstance(name, str) and locked.get("sha256") == _manifest_digest(manifest, name=name)


def _hash_all(paths: list[str], sizes: list[int], jobs: int, desc: str) -> list[str]:
    """SHA-256 of local files on `jobs` threads (hashlib releases the GIL), with a byte
    progress bar on a terminal."""
    from tqdm import tqdm

    with tqdm(total=sum(sizes), unit="B", unit_scale=True, desc=desc, disable=not sys.stderr.isatty(),
              leave=False) as bar, ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        def one(item):
            path, size = item
            digest = sha256_file(path)
            bar.update(size)
            return digest

        return list(pool.map(one, zip(paths, sizes)))


# ---------------------------------------------------------------------------- what the lock records


def _input_entry(f, digest: str | None) -> dict:
    if f.uri.startswith("s3://"):
        return {"name": f.name, "size": f.size, "etag": f.version}
    entry = {"name": f.name, "size": f.size, "mtime_ns": int(f.version)}
    if digest is not None:
        entry["sha256"] = digest
    return entry


def _resource_refs(manifest: Manifest) -> list[tuple[str, str, str]]:
    """(where the manifest names it, the value as written, the resolved path/URI) of every
    model, index or directory a filter reads."""
    from dolmino.build.resources import file_params

    refs = []
    raw_sources = manifest.raw.get("sources", [])
    for i, source in enumerate(manifest.sources):
        raw_filters = raw_sources[i].get("filters", []) if i < len(raw_sources) else []
        for j, spec in enumerate(source.filters):
            for param in file_params(spec):
                written = raw_filters[j].get(param, spec[param]) if j < len(raw_filters) else spec[param]
                refs.append((f"sources[{i}].filters[{j}].{param} ({source.name}, {spec['type']})", written,
                             spec[param]))
    return refs


def _index_problems(manifest: Manifest) -> list[str]:
    """A local decontamination index the build would refuse (another hash version, not an index
    file), one line each: the lock pinned it, `--check` said "no drift", and the build then refused
    it (found by a tester). An s3:// index is checked by the build, which fetches it."""
    specs = [(i, j, source.name, spec) for i, source in enumerate(manifest.sources)
             for j, spec in enumerate(source.filters) if spec.get("type") == "decontaminate"]
    if not specs:
        return []
    from filters.decontamination import IndexFileError, read_index_meta  # numba: only where an index is named

    problems = []
    for i, j, name, spec in specs:
        path = spec.get("index_path")
        if path and not path.startswith("s3://") and os.path.isfile(path):
            try:
                read_index_meta(path)
            except IndexFileError as exc:
                problems.append(f"sources[{i}].filters[{j}].index_path ({name}, decontaminate): {exc}")
    return problems


def _resource_digest(uri: str) -> tuple[str, bool]:
    from dolmino.build.resources import local_digest, s3_digest

    if uri.startswith("s3://"):
        return s3_digest(uri)
    if not os.path.exists(uri):
        raise FileNotFoundError(uri)
    return local_digest(uri)


def _scorer_refs(manifest: Manifest) -> list[tuple[str, str]]:
    """(where the manifest names it, the scorer string) of every custom "module:callable" scorer:
    its scores come from that code. Registered scorers (fasttext_label_probability, ...) are
    dolmino's own code, pinned by dolmino_version, and their model files are resources."""
    from filters.quality import SCORERS

    return [(f"sources[{i}].filters[{j}].scorer ({source.name}, {spec['type']})", spec["scorer"])
            for i, source in enumerate(manifest.sources) for j, spec in enumerate(source.filters)
            if isinstance(spec.get("scorer"), str) and spec["scorer"] not in SCORERS]


def _scorer_digest(scorer: str, base_dir: str | None) -> tuple[str, str] | str:
    """(SHA-256, what was hashed) of a custom scorer's code, the digest its attribute set is
    keyed by (`filters.quality.scorer_source`); else the sentence saying why there is none.
    What was hashed is named relative to the manifest's directory, else by its base name: a
    note for the reviewer, not compared (the digest is), and no home directory in a committed lock."""
    from filters.quality import scorer_source

    try:
        found = scorer_source(scorer)
    except ValueError as exc:  # the module no longer imports
        return str(exc)
    if found is None:
        return f"scorer {scorer!r}: the source of module {scorer.partition(':')[0]!r} cannot be found or read"
    hashed, digest = found  # a package's directory (in a zip: "code.zip/pkg/"), or a module's file
    name = os.path.relpath(hashed, base_dir) if base_dir else ".."
    if name.startswith(".."):
        name = os.path.basename(hashed.rstrip("/" + os.sep))
    if hashed.endswith("/") or os.path.isdir(hashed):
        return digest, f"package {name.rstrip('/' + os.sep)}/ (its Python source files)"
    return digest, f"module file {name}"


def _tokenizer_entry(manifest: Manifest) -> dict:
    from dolmino.tokenizer import tokenizer_json

    spec = manifest.tokenizer
    written = (manifest.raw.get("tokenizer") or {}).get("path")
    return {"name": spec.name, "path": written, "packaged": spec.path is None,
            "sha256": hashlib.sha256(tokenizer_json(spec).encode("utf-8")).hexdigest()}


def _data_root_as_written(manifest: Manifest) -> str | None:
    """The manifest's data_root as written (portable) when the lock was made against it, else
    the root used (--data-root): informational, inputs are named relative to it."""
    written = manifest.raw.get("data_root")
    if written is None and manifest.path and manifest.data_root == os.path.dirname(manifest.path):
        return None  # the manifest's own directory, which it states by leaving data_root out
    if written is None or written.startswith("s3://") or os.path.isabs(written) or not manifest.path:
        return manifest.data_root
    resolved = os.path.normpath(os.path.join(os.path.dirname(manifest.path), expand_home(written)))
    return written if resolved == manifest.data_root else manifest.data_root


def make_lock(manifest: Manifest, *, fast: bool = False, jobs: int = 4, log=None) -> dict:
    """The lock of `manifest` as it reads now: inputs, models/indexes, custom scorers' code,
    tokenizer, version.

    Raises BuildError naming every source whose inputs cannot be listed, every missing model
    and every custom scorer whose source cannot be found: a lock of a manifest that cannot
    build pins nothing, and one that cannot pin a scorer's code would fail every check."""
    from dolmino.build.inputs import list_sources, no_match_hint

    log = log or (lambda msg: None)
    problems = []
    # The tokenizer, models, indexes, scorers and the listing first: a missing model or a glob typo is
    # found before hashing the pool (hours on a real one), not after (found by a reviewer, a tester).
    from dolmino.s3 import S3ObjectError

    tokenizer = None
    try:
        tokenizer = _tokenizer_entry(manifest)
    except ManifestError as exc:
        problems.append(str(exc))
    resources = []
    for where, written, uri in _resource_refs(manifest):
        try:
            digest, is_dir = _resource_digest(uri)
        except FileNotFoundError:
            problems.append(f"{where}: {written}: no such file or directory")
            continue
        except (BuildError, S3ObjectError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        resources.append({"where": where, "path": written, "sha256": digest, "kind": "directory" if is_dir else "file"})
        log(f"{where}: {written} sha256 {digest[:16]}...")
    problems += _index_problems(manifest)
    scorers = []
    base_dir = os.path.dirname(manifest.path) if manifest.path else None
    for where, scorer in _scorer_refs(manifest):
        found = _scorer_digest(scorer, base_dir)
        if isinstance(found, str):
            problems.append(f"{where}: {found}, so the lock cannot pin its code; make the scorer a module file or "
                            "package on the Python path")
            continue
        scorers.append({"where": where, "scorer": scorer, "sha256": found[0], "hashed": found[1]})
        log(f"{where}: scorer {scorer} sha256 {found[0][:16]}... ({found[1]})")
    listing = list_sources(manifest)
    problems += listing.all_problems()
    if problems:  # ";" ends each problem: the command line prints an error on one line
        raise BuildError("cannot lock " + repr(manifest.name) + ":\n  " + ";\n  ".join(problems)
                         + no_match_hint(manifest, problems))
    inputs: dict[str, list[dict]] = {}
    for source in listing.sources:
        files = source.files
        started = time.time()
        local = [f for f in files if not f.uri.startswith("s3://")]
        digests = {} if fast or not local else dict(zip(
            (f.uri for f in local), _hash_all([f.uri for f in local], [f.size for f in local], jobs,
                                              f"hashing {source.name}")))
        inputs[source.name] = [_input_entry(f, digests.get(f.uri)) for f in files]
        kind = "size+mtime" if fast and local else ("SHA-256" if local else "ETag")
        log(f"{source.name}: {len(files):,} file(s), {sum(f.size for f in files):,} bytes ({kind}, "
            f"{time.time() - started:.1f} s)")
    return {
        "format": LOCK_FORMAT,
        "dolmino_version": project_version(),
        "manifest": {"name": manifest.name, "file": os.path.basename(manifest.path) if manifest.path else None,
                     "sha256": _manifest_digest(manifest)},
        "data_root": _data_root_as_written(manifest),
        "hash": "size+mtime" if fast else "sha256",
        "tokenizer": tokenizer,
        "resources": resources,
        "scorers": scorers,
        "inputs": inputs,
    }


def dumps_lock(lock: dict) -> str:
    """Pretty JSON with one input file per line, so a re-lock diffs file by file in review."""
    head = json.dumps({k: v for k, v in lock.items() if k != "inputs"}, indent=2)
    body = []
    for name, entries in lock.get("inputs", {}).items():
        rows = ",\n".join("      " + json.dumps(e) for e in entries)
        body.append(f"    {json.dumps(name)}: [\n{rows}\n    ]" if entries else f"    {json.dumps(name)}: []")
    inputs = ('  "inputs": {\n' + ",\n".join(body) + "\n  }") if body else '  "inputs": {}'
    return head[:-2] + ",\n" + inputs + "\n}\n"


def write_lock(manifest: Manifest, path: str | None = None, **options) -> str:
    """Lock `manifest` and write the lock (default: MANIFEST.lock.json beside it); returns the path."""
    if path is None:
        if not manifest.path:
            raise ManifestError("lock: the manifest has no file; pass the lock's path")
        path = lock_path_for(manifest.path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):  # found before hashing the pool (hours on a real one), not after
        raise ManifestError(f"lock: cannot write {path}: no directory {folder}")
    lock = make_lock(manifest, **options)
    from dolmino.storage import write_bytes

    # Its own temporary file, removed and the lock named when the write fails: a full disk was a traceback ending
    # in "unexpected OSError: [Errno 28] No space left on device" and left "<lock>.tmp<pid>" behind (a tester).
    write_bytes(path, dumps_lock(lock).encode("utf-8"))
    return path


def read_lock(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            lock = json.load(fh)
    except FileNotFoundError:
        raise BuildError(f"{path}: no lock file (write one with `dolmino lock MANIFEST`)") from None
    except IsADirectoryError:
        raise BuildError(f"{path}: is a directory, not a lock file (--lockfile names the file)") from None
    except UnicodeDecodeError as exc:  # a traceback, as the hand-edited entries below were (a tester)
        raise BuildError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); lock the manifest "
                         "again (`dolmino lock MANIFEST`)") from None
    except json.JSONDecodeError as exc:
        raise BuildError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(lock, dict) or lock.get("format") != LOCK_FORMAT:
        raise BuildError(f"{path}: not a {LOCK_FORMAT} lock file (format {lock.get('format') if isinstance(lock, dict) else None!r})")
    for key in ("inputs", "resources", "tokenizer", "manifest"):
        if key not in lock:
            raise BuildError(f"{path}: the lock has no {key!r}")
    _check_lock_entries(path, lock)
    return lock


def _check_lock_entries(path: str, lock: dict) -> None:
    """A lock is reviewed and can be edited by hand: an entry without a field the check reads
    is named here (a resource without "sha256" was a KeyError traceback; found by a tester)."""
    def need(entry, where: str, fields: dict) -> None:
        if not isinstance(entry, dict):
            raise BuildError(f"{path}: malformed lock: {where} is not an object; lock the manifest again "
                             "(`dolmino lock MANIFEST`)")
        for name, kind in fields.items():
            if not isinstance(entry.get(name), kind) or isinstance(entry.get(name), bool):
                raise BuildError(f"{path}: malformed lock: {where} has no {name!r} ({kind.__name__}); lock the "
                                 "manifest again (`dolmino lock MANIFEST`)")

    if not isinstance(lock["inputs"], dict) or not isinstance(lock["resources"], list):
        raise BuildError(f"{path}: malformed lock: 'inputs' must be an object, 'resources' a list")
    for source, entries in lock["inputs"].items():
        if not isinstance(entries, list):
            raise BuildError(f"{path}: malformed lock: inputs[{source!r}] is not a list")
        for i, entry in enumerate(entries):
            need(entry, f"inputs[{source!r}][{i}]", {"name": str, "size": int})
    for i, entry in enumerate(lock["resources"]):
        need(entry, f"resources[{i}]", {"where": str, "path": str, "sha256": str})
    if "scorers" in lock:  # optional: a lock made before dolmino recorded scorers has none (see `_check_scorers`)
        if not isinstance(lock["scorers"], list):
            raise BuildError(f"{path}: malformed lock: 'scorers' must be a list")
        for i, entry in enumerate(lock["scorers"]):
            need(entry, f"scorers[{i}]", {"where": str, "scorer": str, "sha256": str})
    need(lock["tokenizer"], "tokenizer", {"sha256": str})
    need(lock["manifest"], "manifest", {})  # its name is compared: .get() on a string was a traceback (a tester)


# ---------------------------------------------------------------------------- checking


def _check_inputs(source: str, locked: list[dict], files, rehash: bool, jobs: int) -> list[str]:
    problems = []
    by_name = {e["name"]: e for e in locked}
    current = {f.name: f for f in files}
    to_hash = []
    for name, f in sorted(current.items()):
        entry = by_name.get(name)
        if entry is None:
            problems.append(f"{source}: {name}: not in the lock (a new input file)")
            continue
        remote = f.uri.startswith("s3://")
        if remote != ("etag" in entry):
            was, now = ("an S3 object", "a local file") if "etag" in entry else ("a local file", "an S3 object")
            problems.append(f"{source}: {name}: locked as {was}, now read as {now}; lock again against this data "
                            "root (`dolmino lock --data-root ...`)")
            continue
        if entry.get("size") != f.size:
            problems.append(f"{source}: {name}: size {entry.get('size'):,} in the lock, {f.size:,} now")
            continue
        if remote:
            if entry["etag"] != f.version:
                problems.append(f"{source}: {name}: ETag {entry['etag']} in the lock, {f.version} now (the object "
                                "was replaced)")
            continue
        same_mtime = str(entry.get("mtime_ns")) == f.version
        if "sha256" not in entry:
            if not same_mtime:
                problems.append(f"{source}: {name}: modified since the lock (mtime); the lock was made with --fast, "
                                "so the content cannot be compared")
            continue
        if rehash or not same_mtime:
            to_hash.append((f, entry))
    if to_hash:
        digests = _hash_all([f.uri for f, _ in to_hash], [f.size for f, _ in to_hash], jobs, f"checking {source}")
        for (f, entry), digest in zip(to_hash, digests):
            if digest != entry["sha256"]:
                problems.append(f"{source}: {f.name}: SHA-256 {entry['sha256'][:16]}... in the lock, "
                                f"{digest[:16]}... now (the content changed)")
    for name in sorted(set(by_name) - set(current)):
        problems.append(f"{source}: {name}: in the lock but no longer listed (removed or renamed)")
    return problems


def _paired(refs: list[tuple], locked: list[dict]) -> tuple[list[tuple[tuple, dict | None]], list[dict]]:
    """(each of the manifest's `refs` with the lock's entry recorded at its place, or None; the lock's
    entries that no ref names, in the lock's order). A place is the first word of `where`
    ("sources[1].filters[0].model_path"): the names in parentheses after it may change without moving it."""
    by_place = {entry["where"].split(" ")[0]: entry for entry in locked}
    pairs = [(ref, by_place.pop(ref[0].split(" ")[0], None)) for ref in refs]
    return pairs, list(by_place.values())


def _check_scorers(manifest: Manifest, locked: list[dict] | None) -> list[str]:
    """Drift of the custom scorers' code. A lock without "scorers" was made before dolmino
    recorded them: it cannot vouch for a scorer's code, and a --locked build would score with
    whatever the code is now (the silence this check ends), so each custom scorer is drift
    until the manifest is locked again; a manifest without custom scorers passes as before."""
    current = _scorer_refs(manifest)
    if locked is None:
        return [f"{where}: scorer {scorer!r}: not recorded (the lock was made before dolmino recorded a custom "
                "scorer's code); lock the manifest again" for where, scorer in current]
    problems = []
    base_dir = os.path.dirname(manifest.path) if manifest.path else None
    pairs, gone = _paired(current, locked)
    for (where, scorer), entry in pairs:
        if entry is None:
            problems.append(f"{where}: scorer {scorer!r}: not in the lock")
            continue
        if entry["scorer"] != scorer:
            problems.append(f"{where}: the manifest names scorer {scorer!r}, the lock {entry['scorer']!r}")
            continue
        found = _scorer_digest(scorer, base_dir)
        if isinstance(found, str):
            problems.append(f"{where}: {found} now, so its code cannot be compared with the lock")
        elif found[0] != entry["sha256"]:
            problems.append(f"{where}: scorer {scorer!r}: SHA-256 {entry['sha256'][:16]}... in the lock, "
                            f"{found[0][:16]}... now (the scorer's code changed: {found[1]})")
    for entry in gone:
        problems.append(f"{entry['where']}: scorer {entry['scorer']!r}: in the lock but the manifest no longer "
                        "names it")
    return problems


def check_lock(manifest: Manifest, lock_path: str, *, rehash: bool = False, jobs: int = 4,
               lock: dict | None = None, listing: SourcesListing | None = None) -> list[str]:
    """Every way the inputs, models, indexes, custom scorers' code and tokenizer `manifest`
    reads now differ from the lock at `lock_path`, one line each naming the file or scorer, and
    a local decontamination index the build would refuse (`_index_problems`); [] when nothing
    drifted. `lock`: the lock as `read_lock` read it, `listing`: the inputs as `list_sources`
    listed them, where the caller has them."""
    from dolmino.build.inputs import list_sources

    lock = read_lock(lock_path) if lock is None else lock
    problems = []
    if not _lock_is_for(lock["manifest"], manifest):
        problems.append(f"{lock_path}: the lock is for manifest {lock['manifest'].get('name')!r}, not {manifest.name!r}")
    locked_inputs = lock["inputs"]
    names = [s.name for s in manifest.sources]
    listing = list_sources(manifest) if listing is None else listing
    problems += listing.problems
    for source in listing.sources:
        if source.name not in locked_inputs:
            problems.append(f"{source.name}: the source is not in the lock (lock the manifest again)")
            continue
        if source.problems:
            problems += [f"{p} (the lock has {len(locked_inputs[source.name]):,} file(s))" for p in source.problems]
            continue
        problems += _check_inputs(source.name, locked_inputs[source.name], source.files, rehash, jobs)
    for name in locked_inputs:
        if name not in names:
            problems.append(f"{name}: in the lock but not a source of the manifest")
    base_dir = os.path.dirname(manifest.path) if manifest.path else None  # where the manifest resolves paths
    pairs, gone = _paired(_resource_refs(manifest), lock["resources"])
    for (where, written, uri), entry in pairs:
        if entry is None:
            problems.append(f"{where}: {written}: not in the lock")
            continue
        # What the build opens, not the text: "./models/q.bin" for "models/q.bin" was drift here
        # and no change to `dolmino diff` (found by a tester); the digest below pins the bytes.
        if resolve_relative(base_dir, entry["path"]) != uri:
            problems.append(f"{where}: the manifest names {written}, the lock {entry['path']}")
            continue
        try:
            digest, _ = _resource_digest(uri)
        except FileNotFoundError:
            problems.append(f"{where}: {written}: no such file or directory")
            continue
        if digest != entry["sha256"]:
            problems.append(f"{where}: {written}: SHA-256 {entry['sha256'][:16]}... in the lock, {digest[:16]}... now "
                            "(the model or index changed)")
    for entry in gone:
        problems.append(f"{entry['where']}: {entry['path']}: in the lock but the manifest no longer reads it")
    # Not drift but as fatal: an index locked by an older dolmino is byte for byte the same after an upgrade,
    # and `--check` said "no drift" of an index the build then refused (another hash version)
    problems += _index_problems(manifest)
    problems += _check_scorers(manifest, lock.get("scorers"))
    tok = _tokenizer_entry(manifest)
    if tok["sha256"] != lock["tokenizer"].get("sha256"):
        problems.append(f"tokenizer {tok['path'] or tok['name']}: SHA-256 {str(lock['tokenizer'].get('sha256'))[:16]}... "
                        f"in the lock, {tok['sha256'][:16]}... now")
    return problems


def manifest_note(manifest: Manifest, lock_path: str, lock: dict | None = None) -> str | None:
    """A note when the manifest's content is not what was locked. Not drift: the lock pins
    what the manifest reads (checked by `check_lock`), and its SHA-256 of the manifest is
    provenance, which an edit of the prose changes too. But a budget, seed or filter edited
    since is a different build, and a --locked build's manifest.lock.json would name it."""
    locked = (read_lock(lock_path) if lock is None else lock)["manifest"].get("sha256")
    now = _manifest_digest(manifest)
    if locked == now:
        return None
    return (f"{lock_path} was made from another version of this manifest (content SHA-256 {str(locked)[:16]}... "
            f"then, {now[:16]}... now): the inputs, models and tokenizer it pins are checked, the manifest's own "
            "settings are not; lock again if the edit is meant")


def require_lock(manifest: Manifest, lock_path: str | None = None,
                 listing: SourcesListing | None = None) -> tuple[str, str | None]:
    """For `--locked` builds: (the lock's path, `manifest_note`'s note) when nothing drifted, else a
    BuildError naming every drifted file (the first SHOWN_PROBLEMS). The lock is read once and the
    inputs listed once, `listing` where the build has listed them: the check and the note each read
    the lock, and the check and the build each listed every source (t242)."""
    if lock_path is None:
        if not manifest.path:
            raise BuildError("--locked: the manifest has no file to find its lock beside; pass --lockfile")
        lock_path = lock_path_for(manifest.path)
    lock = read_lock(lock_path)
    problems = check_lock(manifest, lock_path, lock=lock, listing=listing)
    if problems:
        shown = problems[:SHOWN_PROBLEMS] + ([f"... and {len(problems) - SHOWN_PROBLEMS} more"]
                                             if len(problems) > SHOWN_PROBLEMS else [])
        # ";" ends each: the command line prints an error on one line, where they ran together (a tester)
        raise BuildError(f"--locked: {len(problems)} difference(s) from {lock_path}:\n  " + ";\n  ".join(shown)
                         + "\n  (if the change is intended, run `dolmino lock` again and commit the lock)")
    return lock_path, manifest_note(manifest, lock_path, lock)


def place_lock(out: str, lock_path: str | None) -> None:
    """Copy the verified lock into a build output as manifest.lock.json (local or s3://), or
    remove a stale one when the build was not locked."""
    from dolmino.storage import delete, write_bytes

    target = f"{out.rstrip('/')}/{BUILD_LOCK_NAME}"
    if lock_path is None:
        delete(out, [BUILD_LOCK_NAME])
        return
    with open(lock_path, "rb") as fh:
        write_bytes(target, fh.read())


# ---------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from dolmino.plan import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="dolmino lock", formatter_class=HelpFormatter,
        description="Pin every input file (size and ETag on S3, SHA-256 locally), model, index, custom scorer's "
                    "code and the tokenizer (SHA-256) a manifest reads, in MANIFEST.lock.json; `--check` reports "
                    "drift, and build_mix.py --locked refuses to build on any.")
    parser.add_argument("manifest", help="mix or pool manifest JSON")
    parser.add_argument("--lockfile", default=None, type=local_path,
                        help="lock file path (default: MANIFEST.lock.json beside the manifest)")
    parser.add_argument("--data-root", default=None, help="where the manifest's relative paths live, local or s3:// "
                                                          "(default: the manifest's data_root)")
    parser.add_argument("--fast", action="store_true", help="record size and mtime of local files instead of "
                                                            "their SHA-256 (for pools too large to hash)")
    parser.add_argument("--check", action="store_true", help="do not write: compare with the lock, exit 1 on drift")
    parser.add_argument("--rehash", action="store_true", help="with --check: re-hash every local input, not only "
                                                              "those whose mtime moved")
    parser.add_argument("--py-files", default=None, metavar="FILES",
                        help=PY_FILES_HELP + ", imported here to hash it as the build will (give the build the same)")
    parser.add_argument("--jobs", type=positive_int, default=min(8, os.cpu_count() or 1), help="hashing threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from dolmino.assets import AssetError
    from dolmino.s3 import cli_errors

    args = parse_args(argv)
    errors = cli_errors("dolmino lock", expected=(ManifestError, BuildError, AssetError))  # a read-only HOME (a tester)
    shipped: list[str] = []
    try:
        shipped = py_files(args.py_files)
        import_py_files(shipped)  # before the manifest check, which imports a custom scorer
        manifest = load_named_manifest(args.manifest, args.data_root)
        path = args.lockfile or lock_path_for(args.manifest)
        if args.check:
            # read once for both: a lock of a 300,000-file pool is 54 MB of JSON, 0.6 s to read and check (t235)
            lock = read_lock(path)
            problems = check_lock(manifest, path, rehash=args.rehash, jobs=args.jobs, lock=lock)
            for problem in problems:
                print(f"drift: {problem}")
            if note := manifest_note(manifest, path, lock):
                print(f"note: {note}")
            print(f"{path}: {'no drift' if not problems else f'{len(problems)} difference(s)'}")
            return 1 if problems else 0
        written = write_lock(manifest, path, fast=args.fast, jobs=args.jobs,
                             log=lambda msg: print(f"dolmino lock: {msg}", file=sys.stderr))
    except Exception as exc:  # noqa: BLE001 - one redacted line
        return errors.report(explained(exc, shipped))
    lock = read_lock(written)
    files = sum(len(v) for v in lock["inputs"].values())
    scorers = f"{len(lock['scorers'])} custom scorer(s), " if lock["scorers"] else ""
    print(f"wrote {written}: {files:,} input file(s) in {len(lock['inputs'])} source(s), "
          f"{len(lock['resources'])} model/index file(s), {scorers}tokenizer {lock['tokenizer']['sha256'][:16]}...")
    return 0


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
