"""Command lines of the build: `spark-submit dolmino/build_mix.py`, `dolmino tag`, `dolmino mix`.

All three take the same arguments and run `dolmino.build.mix.run_build`; they differ in the
phase: the build runs tag then mix, reusing attributes that already exist; `tag` only
writes attributes; `mix` refuses to start when attributes are missing.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fnmatch
import os
import re
import sys
from pathlib import Path

from dolmino.argtypes import byte_size
from dolmino.build.inputs import DEFAULT_SPLIT_BYTES, DEFAULT_TASK_BYTES
from dolmino.errors import BuildError, ManifestError
from dolmino.manifest import expand_home, format_count
from dolmino.prefetch import DEFAULT_READ_AHEAD
from dolmino.py_files import (PY_FILES_HELP, data_file_hint, explained, import_py_files, own_module_missing,
                              py_files, refuse_submitted_shadowing)
from dolmino.s3 import local_path, place_remedy

PHASES = {
    "all": ("build_mix", "Build a data mix from a manifest: tag the pools (reusing attributes), select, tokenize, "
                         "write memmaps."),
    "tag": ("dolmino tag", "Tag every pool document once: attribute files (scores, verdicts, dedup clusters) that any "
                           "number of mixes reuse."),
    "mix": ("dolmino mix", "Build a mix from existing attributes (run `dolmino tag` first)."),
}


def parse_args(argv: list[str] | None, phase: str) -> argparse.Namespace:
    """The name in usage and messages is the one the user typed (`dolmino build` runs build_mix)."""
    from dolmino.cli import invoked_as
    from dolmino.help_format import DefaultsHelpFormatter

    name, description = PHASES[phase]
    prog = invoked_as(name)

    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=DefaultsHelpFormatter)
    if phase == "all":
        parser.add_argument("--manifest", default=None,
                            help="mix or pool manifest JSON (default: manifests/<budget>.json for 50B/100B/300B, "
                                 "built with that manifest's own budget as released, else manifests/demo.json)")
        # as `dolmino tag MANIFEST` / `dolmino mix MANIFEST` take it: `dolmino build M.json` was refused (a tester)
        parser.add_argument("manifest_arg", nargs="?", default=None, metavar="MANIFEST",
                            help="the manifest, as --manifest gives it")
    else:
        parser.add_argument("manifest", help="mix or pool manifest JSON")
    # tag reads every pool document whatever the budget and writes only attributes: it takes the mix's
    # --budget and --out (one command line for both phases), and its help said they were its own (a tester)
    parser.add_argument("--budget", default=None, help="token budget with K/M/B/T suffix, e.g. 100B "
                                                       "(default: the manifest's)"
                        + ("; checked, not used: the tag reads every pool document" if phase == "tag" else ""))
    parser.add_argument("--out", default=None, help="output directory or s3:// prefix (default: the manifest's "
                                                    "'output')"
                        + ("; the tag writes nothing there, it places the default --attributes"
                           if phase == "tag" else ""))
    parser.add_argument("--data-root", default=None, help="where the manifest's relative source paths live, local "
                                                          "or s3:// (default: the manifest's data_root)")
    parser.add_argument("--attributes", default=None, help="attributes root, local or s3:// "
                                                           "(default: <parent of --out>/attributes)")
    parser.add_argument("--master", default=None, help="Spark master URL (default: spark-submit's / "
                                                       "spark-defaults.conf; local[*] when nothing sets one)")
    parser.add_argument("--driver-memory", default=None, help="driver memory when this script starts Spark itself "
                                                              "(default: Spark's)")
    parser.add_argument("--task-size", default=format_count(DEFAULT_TASK_BYTES),
                        help="input bytes per task: small files are grouped, a larger unit is a task of its own")
    parser.add_argument("--split-size", default=format_count(DEFAULT_SPLIT_BYTES),
                        help="plain .jsonl and Posts.xml files larger than this are read as byte ranges of up to "
                             "this size; part of the attribute layout, so `dolmino tag` and `dolmino mix` take the "
                             "same one ("
                             + ("another one than the tag's is refused, naming a file it cut otherwise)"
                                if phase == "mix" else "another one tags the split files again)"))
    parser.add_argument("--read-ahead", type=int, default=DEFAULT_READ_AHEAD,
                        help="S3 objects of up to 4 MB (inputs, attribute files) that each task fetches ahead, "
                             "concurrently, so a task of many small files does not wait for each GET in turn "
                             "(0: one at a time)")
    parser.add_argument("--py-files", default=None, metavar="FILES",
                        help=PY_FILES_HELP + ", which this driver imports and every executor, local or remote "
                                             "(PYTHONPATH reaches no remote executor)")
    parser.add_argument("--quiet", action="store_true", help="no live progress lines")
    if phase != "tag":  # tag writes attributes only, never --out
        parser.add_argument("--overwrite", action="store_true",
                            help="replace a complete build of another manifest or budget in --out, which is "
                                 "refused otherwise; the same manifest and budget again need no flag (a rerun keeps "
                                 "the parts whose inputs and settings did not change)")
    parser.add_argument("--locked", action="store_true", help="refuse to build if any input, model, index, custom "
                                                              "scorer's code or the tokenizer differs from the "
                                                              "manifest's lock (dolmino lock)")
    parser.add_argument("--lockfile", default=None, type=local_path,
                        help="the lock for --locked (default: MANIFEST.lock.json beside the manifest)")
    args = parser.parse_args(argv, argparse.Namespace(prog=prog))
    if phase == "all":
        given = args.__dict__.pop("manifest_arg")
        if given is not None and args.manifest is not None and Path(given).resolve() != Path(args.manifest).resolve():
            parser.error(f"two manifests: {given} and --manifest {args.manifest}; give one")
        args.manifest = args.manifest or given
    return args


NAMED_BUDGETS = ("50B", "100B", "300B")


def default_manifest(budget: str | None) -> str:
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    manifests = os.path.join(here, "manifests")
    if budget and budget.upper() in NAMED_BUDGETS:
        return os.path.join(manifests, f"{budget.upper()}.json")
    return os.path.join(manifests, "demo.json")


def _location(value: str) -> str:
    return value if value.startswith("s3://") else os.path.abspath(expand_home(value))


def _check_locations(out: str, attributes: str, phase: str = "all") -> None:
    """What would otherwise fail only after Spark started: an --out that is a file or cannot be
    written, an s3:// location whose bucket name is invalid or whose bucket does not exist. A mix
    only reads the attributes (it stops where any are missing): a team's read-only root was refused."""
    from dolmino import s3
    from dolmino.storage import why_unwritable

    for flag, location in (("--out", out), ("--attributes", attributes)):
        if not location:
            continue
        if s3.is_s3(location):
            s3.check_bucket(s3.split_uri(location)[0])  # S3URIError / NoSuchBucket: one line naming it
        elif os.path.exists(location) and not os.path.isdir(location):
            raise BuildError(f"{flag} {location}: exists and is not a directory")
        elif flag == "--attributes" and phase == "mix":
            continue
        elif reason := why_unwritable(location):  # it failed in the executors, after Spark started (a tester)
            also = " (`dolmino mix` reads a tagged root without writing to it)" if flag == "--attributes" else ""
            raise BuildError(f"{flag} {location}: cannot be written ({reason}){also}")


def _source_directory(manifest, pattern: str) -> tuple[str, str | None]:
    """(the directory a source's pattern reads, resolved; the glob that picks which of its entries are
    directories read too, or None: all of it is). Split at the pattern's first segment holding a glob
    character, not at the resolved path's first such character: a `[` in the data root, or `web[[]1]/*.jsonl`
    (a literal `[`, as glob escapes it), made the data root the place read, and the default --attributes
    beside the sources was refused as inside it (found by a tester)."""
    parts = pattern.split("/")
    at = next((i for i, part in enumerate(parts) if any(ch in part for ch in "*?[")), None)
    if at is None:
        return manifest.resolve(pattern), None
    fixed = manifest.resolve("/".join(parts[:at]) or ("/" if pattern.startswith("/") else "."))
    return fixed, parts[at] if at < len(parts) - 1 else None  # a last segment picks files: all of `fixed` is read


def _check_attributes_root(manifest, attributes: str) -> None:
    """An attributes root that is the data root, or inside a source's directory: the build wrote
    its sets there and a rerun read them as inputs (parquet "not dolma documents", MinHash
    `_SOURCE.json` quarantined; found by a tester). Beside the sources' directories is fine."""
    def below(path: str, root: str) -> str | None:
        """The first name of `path` below `root` ('' for `root` itself), None when it is not inside."""
        if path.startswith("s3://") or root.startswith("s3://"):
            path, root = path.rstrip("/") + "/", root.rstrip("/") + "/"
            return path[len(root):].split("/", 1)[0] if path.startswith(root) else None
        path, root = os.path.realpath(path), os.path.realpath(root)
        if os.path.commonpath([path, root]) != root:
            return None
        return "" if path == root else os.path.relpath(path, root).split(os.sep, 1)[0]

    if manifest.data_root and below(attributes, manifest.data_root) == "":
        raise BuildError(f"--attributes {attributes}: is the data root, where a rerun reads attribute files as "
                         "inputs; pick another attributes root")
    for source in manifest.sources:
        for pattern in source.paths:
            fixed, picks = _source_directory(manifest, pattern)
            name = below(attributes, fixed)
            if name is not None and (picks is None or name == "" or fnmatch.fnmatchcase(name, picks)):
                raise BuildError(f"--attributes {attributes}: inside {fixed}, which source {source.name!r} reads "
                                 f"({pattern}): a rerun would read attribute files as inputs; pick another "
                                 "attributes root")


def prepare(args: argparse.Namespace, phase: str):
    """(manifest, BuildOptions) from the command line; raises ManifestError/BuildError/AssetError."""
    from dolmino.assets import dolma2_tokenizer_path
    from dolmino.build.inputs import list_inputs, list_sources
    from dolmino.build.mix import BuildOptions, default_attributes_root
    from dolmino.build.progress import line_interval
    from dolmino.lock import require_lock
    from dolmino.manifest import check_parts, load_named_manifest, parse_count

    # errors naming the file, as plan / diff / lock say them: "sources[0].mix_percent: expected a
    # number" did not say which manifest (a reviewer)
    manifest = load_named_manifest(args.manifest or default_manifest(args.budget), args.data_root)
    if args.budget and (args.manifest is not None or args.budget.upper() not in NAMED_BUDGETS):
        budget = parse_count(args.budget, "--budget")
        # The manifest's own budget is checked at load; this one reached Spark's partitioning, after the tag phase.
        check_parts(budget, manifest.output_spec.tokens_per_file)
    else:  # `--budget 50B` alone names manifests/50B.json: build it as released (its passes)
        budget = manifest.budget
    if manifest.kind == "pool":
        if args.budget:
            raise ManifestError("--budget: a pool manifest takes every source once; it has no budget")
        budget = None
    elif budget is None and phase != "tag":
        raise ManifestError("budget: the manifest has no budget; pass --budget (e.g. --budget 100B)")
    out = args.out or manifest.output
    if not out and (phase != "tag" or not args.attributes):  # tag writes only attributes: --attributes will do
        raise ManifestError("output: the manifest has no output directory; pass --out"
                            + (" (or --attributes)" if phase == "tag" else ""))
    out = _location(out) if out else ""
    attributes = _location(args.attributes) if args.attributes else default_attributes_root(out)
    _check_locations(out, attributes, phase)
    _check_attributes_root(manifest, attributes)
    task_bytes, split_bytes = _size(args.task_size, "--task-size"), _size(args.split_size, "--split-size")
    if args.read_ahead < 0:
        raise BuildError(f"--read-ahead must be 0 or more, got {args.read_ahead}")
    if not args.quiet:
        line_interval()  # a DOLMINO_PROGRESS_S that is not a number of seconds, said before Spark starts
    sources = list_sources(manifest)  # once: the lock's check and the build read this listing
    # --locked: a BuildError naming every drifted file
    lock, note = require_lock(manifest, args.lockfile, sources) if args.locked else (None, None)
    if note:
        print(f"{args.prog}: warning: {note}", file=sys.stderr)
    if not manifest.tokenizer.path:  # the asset cache, in a read-only HOME: a traceback after Spark started (a tester)
        dolma2_tokenizer_path()
    listing = list_inputs(manifest, sources)  # every missing input named before Spark starts
    options = BuildOptions(budget or 0, out, attributes, phase=phase, task_bytes=task_bytes,
                           split_bytes=split_bytes, read_ahead=args.read_ahead, quiet=args.quiet,
                           lock=lock, overwrite=getattr(args, "overwrite", False), listing=listing)
    return manifest, options


def ship_py_files(sc, files: list[str]) -> None:
    """Every executor imports `files` (`SparkContext.addPyFile`): a remote one's Python workers,
    and local mode's. A file that spark-submit's own --py-files shipped already is not added again
    (`spark-submit --py-files code.zip dolmino/build_mix.py --py-files code.zip`); one its --files
    shipped is, as code (--files puts no zip on the executors' sys.path). One of the same name from
    another path failed after the session started (local mode: "exists and does not match
    contents"; a cluster's file server: "already registered with a different path"): refused in
    one line."""
    from urllib.parse import urlparse

    shipped: dict[str, tuple[str, bool]] = {}  # file name: (what spark-submit shipped, whether as code)
    for key in ("spark.submit.pyFiles", "spark.files"):
        for uri in filter(None, (sc.getConf().get(key, "") or "").split(",")):
            parsed = urlparse(uri)
            path = parsed.path if parsed.scheme in ("", "file", "local") else uri
            shipped.setdefault(os.path.basename(parsed.path), (path, key == "spark.submit.pyFiles"))
            if key == "spark.submit.pyFiles" and parsed.scheme in ("", "file", "local"):  # spark-defaults.conf's
                refuse_submitted_shadowing([path])  # under `dolmino build` (spark-submit's build_mix.py did already)
    for path in files:
        other, as_code = shipped.get(os.path.basename(path), (path, False))
        if os.path.abspath(other) != path:
            raise BuildError(f"--py-files {path}: spark-submit ships {other} under the same file name "
                             f"{os.path.basename(path)}; give one of them")
        if not as_code:
            sc.addPyFile(path)


def _size(value: str, flag: str) -> int:
    """A byte size (`dolmino.argtypes.byte_size`: 128 MB, 256M, 64KiB). `--task-size 64MB` was
    refused, its error offering "64M" (a reviewer); the count syntax read "512B" as 512 billion (a
    tester)."""
    try:
        return byte_size(value)
    except ValueError as exc:
        raise ManifestError(f"{flag}: {exc}") from None


# Exceptions raised in an executor reach the driver inside a Py4J error whose text holds the
# executor's Python traceback; these are the ones that are the data's or the storage's fault.
# A traceback names a class by its module (`dolmino.s3.S3PathError`, botocore's generated
# `botocore.errorfactory.NoSuchKey`), builtins by their bare name.
_EXECUTOR_ERRORS = re.compile(
    r"^(?:dolmino\.(?:errors|s3)\.|filters\.quality\.)?(BuildError|ManifestError|InputChangedError|ResourceError"
    r"|ScorerError|FileNotFoundError"
    r"|S3PathError|NoSuchBucket|S3DeleteError|S3ObjectError|S3EndpointError|PermissionError|OSError"
    r"|botocore\.(?:exceptions|errorfactory)\.\w+"
    r"|EndpointConnectionError|NoCredentialsError|ClientError): (.*)$", re.MULTILINE)


# A module the driver imports and an executor's Python cannot: the node's environment is not the driver's.
_MODULE_MISSING = re.compile(r"^ModuleNotFoundError: No module named '([^']+)'$", re.MULTILINE)

# A full, read-only or forbidden place: in an executor's Python (an OSError naming it, storage.naming), said what
# to do (a forbidden one said only "[Errno 13] Permission denied: ...", where the driver's said what to do; a
# reviewer); in Spark's JVM, writing its shuffle and spill files into spark.local.dir, a 150-line Java stack on the
# console and an "unexpected Py4JJavaError" line of 8,000 characters, exit 1 (found by a tester).
_PLACE_ERRNO = re.compile(r"^\[Errno (28|122|30|13|1)\] ")
_JVM_PLACE = re.compile(r"java\.io\.IOException: (?P<failure>No space left on device|Disk quota exceeded"
                        r"|Read-only file system)"
                        r"|java\.nio\.file\.AccessDeniedException: (?P<denied>[^\n]+)"
                        r"|java\.io\.FileNotFoundException: (?P<file>[^\n]+) \(Permission denied\)")
_EXECUTORS_USER = "the executors' user"
_RERUN = "then rerun the same command (finished attribute files and parts are kept)"
# PySpark writes a broadcast's bytes into the driver's spark.local.dir; a full one was "unexpected PicklingError:
# Could not serialize broadcast: OSError: [Errno 28] ...", under the command's copy of the traceback (a tester).
_BROADCAST_PLACE = re.compile(r"Could not serialize broadcast: \w*Error: \[Errno (?:28|122|30)\] ([^\n:]*)")


def _scratch_remedy(failure: str) -> str:
    """What to do about Spark's scratch space that `failure` (the OS's words) found full, read-only or
    forbidden: a read-only one was told to "free space there" (a reviewer)."""
    fix = ("make it writable or point it at a writable disk" if failure.startswith("Read-only") else
           f"make it writable for {_EXECUTORS_USER} or point it at a writable disk"
           if failure.startswith("Permission denied") else "free space there or point it at a larger disk")
    return f"{fix} (spark-submit --conf spark.local.dir=DIR), {_RERUN}"


def driver_scratch_failure(exc: BaseException) -> str | None:
    """One line for a broadcast the driver could not write into its full or read-only Spark scratch space."""
    if type(exc).__name__ != "PicklingError" or not (place := _BROADCAST_PLACE.search(str(exc))):
        return None
    return (f"the driver's Spark scratch space: {place.group(1)} (spark.local.dir or SPARK_LOCAL_DIRS on the driver, "
            f"where broadcasts are written; /tmp by default): {_scratch_remedy(place.group(1))}")


@contextlib.contextmanager
def scratch_broadcast_failures_said_once():
    """Inside, PySpark does not print the traceback of a broadcast it could not write into a full or read-only
    scratch space: 6 lines of its pickle.dump and tempfile frames came before the line of driver_scratch_failure,
    which says all they do (a tester, spark.local.dir on a 6 MB tmpfs). Any other failure's is printed."""
    from pyspark.core import broadcast

    shown = broadcast.print_exec

    def print_exec(stream) -> None:
        failure = sys.exc_info()[1]
        if not (isinstance(failure, OSError) and failure.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)):
            shown(stream)

    broadcast.print_exec = print_exec
    try:
        yield
    finally:
        broadcast.print_exec = shown


_WORKER_DIED = "Python worker exited unexpectedly"
_FATAL = re.compile(r"Fatal Python error: ([^\n]*)")
_FATAL_STACK = re.compile(r"^(?:Current|Thread) [^\n]*\(most recent call first\):\n((?:  File [^\n]*\n)+)",
                          re.MULTILINE)
_PYSPARK_FRAME = f"{os.sep}pyspark{os.sep}"  # a frame of PySpark's worker (pyspark.zip/pyspark/worker.py)
_FAILED_TASK = re.compile(r"Task (\d+) in stage ([\d.]+) failed (\d+) times")


def executor_failure(exc: BaseException, manifest=None) -> str | None:
    """One line for a known failure raised inside an executor (None when it is something else);
    a custom scorer's failure names the filters of `manifest` that use that scorer."""
    from dolmino.s3 import redact

    if type(exc).__name__ not in ("Py4JJavaError", "PythonException"):
        return None
    text = str(exc)
    found = list(_EXECUTOR_ERRORS.finditer(text))
    if not found and (missing := _MODULE_MISSING.findall(text)):
        return redact(_missing_on_executors(missing[-1]))
    if not found and (jvm := _JVM_PLACE.search(text)):
        failure = jvm["failure"] or f"Permission denied: {(jvm['denied'] or jvm['file']).strip()}"
        return redact(f"in an executor: Spark's scratch space: {failure} (its shuffle and spill files, in "
                      f"spark.local.dir; SPARK_LOCAL_DIRS or YARN's LOCAL_DIRS on a cluster's nodes): "
                      f"{_scratch_remedy(failure)}")
    if not found:
        if _WORKER_DIED in text:
            # Killed (the OOM killer, a kill -9) or crashed: Spark's whole Java stack said
            # nothing of what to do (found by a tester); the rerun resumes.
            task = _FAILED_TASK.search(text)
            where = f" (task {task.group(1)} of stage {task.group(2)}, tried {task.group(3)} time(s))" if task else ""
            if fatal := _FATAL.search(text):  # the faulthandler's (dolmino.build.spark.FAULTHANDLER)
                return redact(f"a Python worker crashed{where}: Fatal Python error: {fatal.group(1).strip()}, in the "
                              "code of the stack above (a native library, a scorer of your own): a rerun crashes the "
                              "same way until that code is fixed")
            return (f"a Python worker died{where}: killed, out of memory, or ended by the code it ran (os._exit); "
                    "rerun the same command to resume (finished attribute files and parts are kept)")
        return None
    name, message = found[-1].groups()
    hint = None
    if name == "ScorerError":
        # the first of its frames is the scorer's own module (a library it calls may keep files beside its own)
        own = _FRAME_FILE.search(_frames(text, found[-1]))
        hint = data_file_hint(message, [_code_root(own.group(2))]) if own else None
        if manifest is not None and (sites := _scorer_sites(manifest, message)):
            message = f"{sites}: {message.strip()}"
    text = f"in an executor: {name.rsplit('.', 1)[-1]}: {message.strip()}" + (f"; {hint}" if hint else "")
    if name.endswith(("OSError", "PermissionError")) and (place := _PLACE_ERRNO.match(message.strip())):
        text += f"; {place_remedy(int(place.group(1)), _EXECUTORS_USER)} or give the build another location, {_RERUN}"
    # A custom scorer the driver imported (the manifest check did, before Spark started) but an executor
    # cannot: its code did not travel (PYTHONPATH reaches this machine's processes only).
    if own_module_missing(message):
        text += ("; the driver imported it but the executors cannot: give its .py or .zip to --py-files, which ships "
                 "it to every executor")
    return redact(text)


def _missing_on_executors(module: str) -> str:
    """The line for an executor whose Python cannot import `module`: "unexpected ModuleNotFoundError in an
    executor: No module named 'dolmino'" said neither which interpreter nor what to install there (a tester)."""
    from dolmino.build.worker_env import PACKAGES, project_root

    python = os.environ.get("PYSPARK_PYTHON") or "python3"  # what this driver's SparkContext gave its executors
    top = module.split(".")[0]
    if top in PACKAGES:
        fix = (f"install this project there (`pip install .` of {project_root()}, or `make setup` in a checkout at that path): "
               "the code is not shipped")
    else:
        # a custom scorer's own helper module is no library: `pip install .` does not bring it (a tester)
        fix = (f"install {top} there, as in the driver's environment (`pip install .` installs every dependency), "
               f"or, where {top} is your own code (a custom scorer's helper), give it to --py-files")
    return (f"in an executor: its Python ({python}, PYSPARK_PYTHON on each node) cannot import {module}, which the "
            f"driver's can: every node needs the driver's environment at that path; {fix}")


def _scorer_sites(manifest, message: str) -> str | None:
    """The filters of `manifest` that use the scorer a ScorerError's `message` names: "source 'web' filters[1]"."""
    named = re.match(r"scorer '([^']*)'", message)
    if named is None:
        return None
    sites = [f"source {source.name!r} filters[{i}]" for source in manifest.sources
             for i, spec in enumerate(source.filters)
             if spec.get("type") == "score_threshold" and spec.get("scorer") == named.group(1)]
    return ", ".join(sites) or None


_FRAME_FILE = re.compile(r'^(  File ")([^"\n]+)(")', re.M)


def _frames(text: str, failure: re.Match) -> str:
    """The frames that the message of `failure` (an `_EXECUTOR_ERRORS` match in `text`) carries on the lines
    after its first: a ScorerError's, of the scorer's own code."""
    frames = []
    for line in text[failure.end():].split("\n")[1:]:
        if not line.startswith("  "):  # the message ends; a Py4JJavaError's Java stack follows ("\tat ...")
            break
        frames.append(line)
    return "\n".join(frames)


def _code_root(path: str) -> str:
    """Where the code of a frame's file `path` was imported from: the zip it is in, else its directory."""
    zipped = re.match(r"(.*?\.(?:zip|egg))/", path, re.IGNORECASE)
    return zipped.group(1) if zipped else os.path.dirname(path)


def given_py_files(sc, shipped: list[str]) -> dict[str, str]:
    """File name -> the path the user gave it as, for the files `--py-files` shipped (dolmino's, and
    spark-submit's own, which Spark records as `spark.submit.pyFiles`)."""
    given = {os.path.basename(path): path for path in shipped}
    try:
        submitted = sc.getConf().get("spark.submit.pyFiles", "") or ""
    except Exception:  # noqa: BLE001 - a JVM gone with the failure: the frames keep the copies' paths
        submitted = ""
    for item in submitted.split(","):
        path = item.strip().removeprefix("file://").removeprefix("file:")
        if path:
            given.setdefault(os.path.basename(path), path)
    return given


def _as_given(frames: str, given: dict[str, str]) -> str:
    """The frames with each shipped file named where the user keeps it: an executor imports its copy
    (`.../userFiles-<uuid>/boom.py`, a worker's work directory on a cluster), a path gone when the
    session ends, which the traceback named (a tester's list)."""
    def named(m: re.Match) -> str:
        parts = m.group(2).split("/")
        for k, part in enumerate(parts):
            if part in given and (k == len(parts) - 1 or part.lower().endswith((".zip", ".egg"))):
                return m.group(1) + "/".join([given[part], *parts[k + 1:]]) + m.group(3)
        return m.group(0)
    return _FRAME_FILE.sub(named, frames) if given else frames


def executor_traceback(exc: BaseException, given: dict[str, str] | None = None) -> str | None:
    """What to print once above the build's line for a failure in an executor that `executor_failure`
    names: the frames of a custom scorer's own code that its ScorerError carries (the lines of its
    message after the first; `given`: `given_py_files`), or the Python stack of a worker that crashed,
    down to PySpark's frames (the faulthandler's, most recent call first). None for any other failure."""
    from dolmino.s3 import redact

    if type(exc).__name__ not in ("Py4JJavaError", "PythonException"):
        return None
    text = str(exc)
    last = None
    for last in _EXECUTOR_ERRORS.finditer(text):
        pass
    if last is not None:
        frames = _frames(text, last)
        if last.group(1) != "ScorerError" or not frames:
            return None
        return redact("Traceback of the scorer, in an executor (most recent call last):\n"
                      + _as_given(frames, given or {}))
    stack = _FATAL_STACK.search(text) if _WORKER_DIED in text and _FATAL.search(text) else None
    if stack is None:
        return None
    frames = stack.group(1).splitlines()
    ours = [line for line in frames if _PYSPARK_FRAME not in line and "<frozen " not in line]
    shown = frames[:frames.index(ours[-1]) + 1] if ours else frames
    return redact("Stack of the Python worker that crashed (most recent call first):\n" + "\n".join(shown))


def worker_exception(exc: BaseException) -> tuple[str, str] | None:
    """(traceback, last line) of an exception no class of `executor_failure` covers, raised in a Python
    worker and caught by PySpark (its PythonException): the worker's traceback, printed once, and a last
    line naming the exception. The traceback came twice (PySpark appends the worker's frames to its
    exception, whose message is the same traceback), then a third time as one "unexpected
    PythonException: An exception was thrown from the Python worker: Traceback ..." line (a tester)."""
    from dolmino.s3 import redact

    if type(exc).__name__ != "PythonException":
        return None
    text = str(exc).strip("\n")
    last = text.rfind("Traceback (most recent call last):")  # of the exception raised last, where they chain
    if last < 0:
        return None
    lines = text[last:].split("\n")
    end = next((i for i, line in enumerate(lines) if i and line and not line.startswith(" ")), len(lines))
    told = " ".join(" ".join(lines[end:]).split())
    if not told:
        return None
    kind, _, message = told.partition(": ")
    shown = text[text.find("Traceback (most recent call last):"):].split("\n")
    while len(shown) > 1 and shown[1].startswith("  File ") and _PYSPARK_FRAME in shown[1]:  # PySpark's, above ours
        shown.pop(1)
        while len(shown) > 1 and shown[1].startswith("    "):
            shown.pop(1)
    return redact("\n".join(shown)), \
        redact(f"unexpected {kind.rsplit('.', 1)[-1]} in an executor" + (f": {message}" if message else ""))


# The categories glibc's setlocale(LC_ALL, "") sets, each from LC_ALL, else its own variable, else LANG
_LOCALE_CATEGORIES = ("LC_CTYPE", "LC_NUMERIC", "LC_TIME", "LC_COLLATE", "LC_MONETARY", "LC_MESSAGES", "LC_PAPER",
                      "LC_NAME", "LC_ADDRESS", "LC_TELEPHONE", "LC_MEASUREMENT", "LC_IDENTIFICATION")


def _jvm_environment() -> dict[str, str]:
    """The environment spark-submit's JVM, this driver's parent, started with (Linux /proc). Python, started
    in C, sets LC_CTYPE=C.UTF-8 in its own (PEP 538): where the parent's cannot be read, that value beside a
    C LANG is taken for what the JVM saw as C, and any other is taken as the JVM's."""
    parent = f"/proc/{os.getppid()}"
    try:
        with open(f"{parent}/comm", "rb") as comm, open(f"{parent}/environ", "rb") as environ:
            if comm.read().strip() == b"java":
                pairs = environ.read().decode("utf-8", "surrogateescape").split("\0")
                return dict(pair.split("=", 1) for pair in pairs if "=" in pair)
    except OSError:  # not Linux, or a parent that is gone or another user's
        pass
    env = dict(os.environ)
    if env.get("LC_CTYPE") in ("C.UTF-8", "C.utf8", "UTF-8") and env.get("LANG", "") in ("", "C", "POSIX"):
        del env["LC_CTYPE"]  # Python's coercion of the C locale
    return env


def _jvm_ascii_locale(env: dict[str, str]) -> bool:
    """Whether a JVM started with `env` reads its arguments in a locale that is not UTF-8: it turns each byte
    of a non-ASCII character into '?'. The JVM calls setlocale(LC_ALL, ""), which leaves every category C
    where any of them names a locale not installed (LC_MESSAGES=en_US.UTF-8 beside LANG=C.UTF-8 mangled,
    unsaid; found by a reviewer), and reads arguments in LC_CTYPE's encoding."""
    import locale

    def codeset(name: str) -> str | None:
        """`name`'s encoding, None where it is not installed."""
        saved = locale.setlocale(locale.LC_CTYPE)
        try:
            locale.setlocale(locale.LC_CTYPE, name)
            return locale.nl_langinfo(locale.CODESET)
        except locale.Error:
            return None
        finally:
            locale.setlocale(locale.LC_CTYPE, saved)

    names = {var: env.get("LC_ALL") or env.get(var) or env.get("LANG") or "C" for var in _LOCALE_CATEGORIES}
    if any(codeset(name) is None for name in set(names.values())):
        return True
    return codeset(names["LC_CTYPE"]).replace("-", "").upper() != "UTF8"


def jvm_mangled_argument(argv: list[str]) -> str | None:
    """The error for an argument with '?' in it that spark-submit's JVM may have made of non-ASCII
    characters, or None: under LC_ALL=C, --out /data/é/mix was built into /data/??/mix, and a manifest
    at such a path was "not found" under a name the user never typed (found by a tester)."""
    from dolmino.progress import under_spark_submit

    mangled = next((arg for arg in argv if "?" in arg), None)
    if mangled is None or not under_spark_submit() or not _jvm_ascii_locale(_jvm_environment()):
        return None  # `dolmino build`: Python has argv as typed
    return (f"{mangled!r} holds '?', which is what spark-submit makes of each byte of a non-ASCII character where "
            "the locale is not UTF-8 (LC_ALL / LC_CTYPE / LANG unset, C or POSIX, or an LC_* not installed): rerun "
            "it under a UTF-8 one (LC_ALL=C.UTF-8 spark-submit ...), or with `dolmino build`, which passes arguments "
            "as typed")


def main(argv: list[str] | None = None, phase: str = "all") -> int:
    from dolmino.s3 import cli_errors

    from dolmino.assets import AssetError

    args = parse_args(argv, phase)
    prog = args.prog
    if problem := jvm_mangled_argument(sys.argv[1:] if argv is None else argv):
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return 2
    errors = cli_errors(prog, expected=(ManifestError, BuildError, AssetError), rerun=_RERUN)
    shipped: list[str] = []
    try:
        shipped = py_files(args.py_files)
        import_py_files(shipped)  # before the manifest check, which imports a custom scorer
        manifest, options = prepare(args, phase)
    except Exception as exc:  # noqa: BLE001 - one redacted line (cli_errors)
        return errors.report(explained(exc, shipped))  # "cannot be imported" said nothing of what to do (a tester)
    from dolmino.build.mix import run_build
    from dolmino.build.spark import SparkCommand

    from pyspark.sql import SparkSession

    existing = SparkSession.getActiveSession()  # main() called in a process that already runs Spark
    command = SparkCommand(prog, "finished attribute files and parts are kept")
    spark = command.start(f"dolmino-{phase}-{manifest.name}", args.master, args.driver_memory)
    if spark is None:
        return 2
    try:
        ship_py_files(spark.sparkContext, shipped)
        with scratch_broadcast_failures_said_once():
            result = run_build(manifest, options, spark)
    except BaseException as exc:  # noqa: BLE001
        if (status := command.stopped(exc)) is not None:
            return status
        if not isinstance(exc, Exception):
            raise
        text = executor_failure(exc, manifest)
        if text is not None:
            if shown := executor_traceback(exc, given_py_files(spark.sparkContext, shipped)):  # once, above
                print(shown, file=sys.stderr)
            print(f"{prog}: error: {text}", file=sys.stderr)
            return 2
        if (text := driver_scratch_failure(exc)) is not None:
            print(f"{prog}: error: {text}", file=sys.stderr)
            return 2
        from dolmino.s3 import s3_failure_message

        if s3_failure_message(exc) is None and (worker := worker_exception(exc)) is not None:
            print(f"{worker[0]}\n{prog}: error: {worker[1]}", file=sys.stderr)
            return 1
        return errors.report(exc)
    finally:
        if existing is None:  # stop only the session this command started
            command.stop(spark)
    warnings = result.get("warnings", [])
    for warning in warnings:
        print(f"{prog}: warning: {warning}", file=sys.stderr)
    # The last line counts them: on a real build they scroll away above the report (a tester).
    warned = f"; {len(warnings)} warning(s) above" if warnings else ""
    if phase == "tag":
        # Per unit: one missing attribute set (a new filter) reads a unit again while its other sets
        # stay; the files written say how much was new ("reused 0" read as nothing kept; a tester).
        only = result.get("signature_units") or 0
        also = f" ({only} only read again for MinHash signatures)" if only else ""
        # Attribute set files apart from the units' quarantine and Stack Exchange documents files: "writing 8
        # attribute file(s)" was followed by a mix that reused 7 (a tester).
        sets = sum(counts["written"] for by_set in result["attribute_files"].values() for counts in by_set.values())
        others = result["files_written"] - sets
        besides = f" and {others} quarantine / documents file(s)" if others else ""
        from dolmino.report import retag_lines

        for line in retag_lines(result["attribute_files"]):  # above the last line, which counts the warnings
            print(f"why: {line}")
        print(f"tagged {result['tagged_units']} unit(s){also}, writing {sets} attribute file(s){besides}; "
              f"reused {result['reused_units']} unit(s) whole; attributes under {result['attributes']}{warned}")
        return 0
    from dolmino.report import render_markdown

    print(render_markdown(result))
    reused = result["run"].get("parts_reused") or 0
    tokens = result["output"]["tokens"]
    parts = f"{result['output']['files'] - reused} part(s){f' and reused {reused}' if reused else ''}"
    where = f"to {options.out} (master {result['run']['spark_master']}, {result['run'].get('executors')} executor(s))"
    if not tokens:  # "wrote 1 part(s), 0 tokens in all" read as a finished build (a tester)
        print(f"wrote {parts}, all empty, {where}: the build holds no tokens, nothing to train on; "
              f"its warnings say why{warned}")
    else:
        print(f"wrote {parts}, {format_count(tokens)} tokens in all, {where}{warned}")
    return 0


def build_main(argv: list[str] | None = None) -> int:
    """`dolmino build`: build_mix's tag and mix in one go."""
    return main(argv, "all")


def tag_main(argv: list[str] | None = None) -> int:
    return main(argv, "tag")


def mix_main(argv: list[str] | None = None) -> int:
    return main(argv, "mix")
