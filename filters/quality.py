"""Quality classifiers: fastText scoring, pluggable 0-5 scorers, and training your own.

OLMo 2's Dolmino web subset keeps DCLM-Baseline documents that the DCLM fastText
classifier puts in its top 7% (P(__label__hq) >= 0.03311014) AND that the FineWeb-Edu
classifier rates int_score >= 2. The real FineWeb-Edu classifier is a BERT regression model:
filter type `fineweb_edu` (filters/fineweb_edu.py). `score_threshold` with the
`fasttext_expected_label` scorer is only a fastText *stand-in* for it (expected value of
`__label__0..5`, a threshold on a float, not the model's rounded int_score), for machines
or tests without the BERT model. The math subsets were kept by a fastText math classifier
the authors trained themselves on LLM-labelled OpenWebMath; `train_fasttext_classifier`
does the same from positive/negative document files.

fastText predicts on one line, so newlines are replaced by spaces before scoring (as DCLM
does). Models load lazily on first use so that filters pickle cheaply to Spark executors.

CLI:
    python -m filters.quality train --pos math.jsonl.zst --neg web.jsonl.zst --out math.bin
    python -m filters.quality percentiles --model m.bin --input docs.jsonl.zst --thresholds 0.01,0.0331
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import traceback
from typing import Iterable, Protocol

import numpy as np

from dolmino.errors import BuildError, ResourceError
from dolmino.s3 import is_s3, local_path, open_uri
from filters.base import number_text

def dclm_line(text: str) -> str:
    """The text as DCLM's `classify_fasttext_hq_prob` gives it to fastText: `" ".join(
    text.strip().splitlines())`. Both engines score this: the binding stripped ASCII newlines
    only and the numba engine the raw text, so a document starting or ending with a no-break
    or ideographic space scored differently in the two (found by a tester), and neither broke
    lines at U+2028, U+2029, U+0085 or \\x1c-\\x1e as DCLM's `splitlines` does."""
    return " ".join(text.strip().splitlines())


# What str.splitlines() ends a line at beyond the ASCII whitespace fastText splits words at.
_LINE_ENDS_NOT_FASTTEXT_SPACE = ("\x1c", "\x1d", "\x1e")


def _numba_text(text: str) -> str:
    """`dclm_line(text)`'s words, cheaper: the numba engine splits words at "\\n\\r\\t\\v\\f" itself, so
    stripped ASCII text needs no joining (most documents; the join copied every one)."""
    text = text.strip()
    if text.isascii() and not any(c in text for c in _LINE_ENDS_NOT_FASTTEXT_SPACE):
        return text
    return " ".join(text.splitlines())


# Models loaded in this process, by (engine, path, size, mtime). The build makes its filters
# anew for every file task, and a Spark Python worker runs many tasks: without this, each
# file would load the (multi-GB) model again.
_LOADED: dict[tuple, object] = {}


def _cached(engine: str, path: str, load):
    """The model at `path` loaded by `load`, once per process.

    A file that is not a model fails as a ResourceError naming the path (see
    `filters.fasttext_numba.check_fasttext_file`), which a build reports in one line."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"fastText model {path!r} does not exist")
    st = os.stat(path)
    key = (engine, os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _LOADED:
        from filters.fasttext_numba import check_fasttext_file

        check_fasttext_file(path)
        try:
            _LOADED[key] = load(path)
        except ResourceError:
            raise
        except (ValueError, RuntimeError) as exc:  # the binding's words for a damaged or unsupported file
            raise ResourceError(f"fastText model {path!r} cannot be loaded: {exc}") from None
    return _LOADED[key]


def dictionary_labels(path: str) -> list[str]:
    """The labels in the dictionary of the fastText model at `path` (local: once per process;
    s3://: read as far as the dictionary)."""
    from filters.fasttext_numba import read_fasttext_labels

    if is_s3(path):
        from dolmino.s3 import object_size

        with open_uri(path, "rb") as fh:
            return read_fasttext_labels(fh, path, size=object_size(path))

    def read(local):
        with open(local, "rb") as fh:
            return read_fasttext_labels(fh, local, size=os.fstat(fh.fileno()).st_size)

    return _cached("labels", path, read)


def _load_fasttext(path: str):
    """The binding's model. The binding never returns on a .bin cut short after its header
    (fasttext 0.9 waits for bytes that never come), so the file is first walked as the numba
    reader walks it (memory-mapped, no matrix read), which names a truncation as such; a model
    that reader does not parse (quantized, hierarchical softmax, subwords) has its headers walked
    (`read_fasttext_labels` with its size): a .ftz cut short loaded and scored 0 or garbage."""
    from filters.fasttext_numba import load_fasttext_numba, read_fasttext_labels

    if load_fasttext_numba(path, projected=False) is None:  # the walk above stopped before the matrices
        with open(path, "rb") as fh:
            read_fasttext_labels(fh, path, size=os.fstat(fh.fileno()).st_size)
    import fasttext

    fasttext.FastText.eprint = lambda *args, **kwargs: None  # silence the load-model warning
    return fasttext.load_model(path)


class FastTextModel:
    """A lazily loaded fastText model that pickles as its path.

    `engine="auto"` scores with `filters.fasttext_numba` (same probabilities, several times
    faster, input matrix memory-mapped) whenever the model allows it, and with the fastText
    binding otherwise (quantized .ftz, hierarchical softmax, character n-grams);
    `"fasttext"` forces the binding, `"numba"` fails loudly when the model is unsupported.
    """

    ENGINES = ("auto", "numba", "fasttext")

    def __init__(self, model_path: str, engine: str = "auto"):
        if not isinstance(model_path, str) or not model_path:
            raise ValueError(f"model_path must be a non-empty string, got {model_path!r}")
        if engine not in self.ENGINES:
            raise ValueError(f"engine must be one of {self.ENGINES}, got {engine!r}")
        self.model_path = model_path
        self.engine = engine
        self._model = None
        self._fast = None
        self._label_set = None

    def __getstate__(self):
        return {"model_path": self.model_path, "engine": self.engine, "_model": None, "_fast": None,
                "_label_set": None}

    @property
    def model(self):
        """The fastText binding's model (loaded on first use)."""
        if self._model is None:
            self._model = _cached("fasttext", self.model_path, _load_fasttext)
        return self._model

    @property
    def fast(self):
        """The numba scorer, or False when this model (or the engine setting) needs the binding."""
        if self._fast is None:
            from filters.fasttext_numba import load_fasttext_numba

            if self.engine == "fasttext":
                self._fast = False
            else:
                loaded = _cached("numba", self.model_path, load_fasttext_numba)
                if loaded is None and self.engine == "numba":
                    # load_fasttext_numba leaves to the binding what it does not read itself (a pruned
                    # dictionary too, or one it cannot parse): naming only three causes misled (a tester)
                    raise ValueError(f"fastText model {self.model_path!r} is one the numba engine does not read "
                                     "(quantized, pruned, hierarchical softmax, character n-grams, or a dictionary it "
                                     "cannot parse): score it with engine='fasttext'")
                self._fast = loaded if loaded is not None else False
                if self._fast:
                    self._label_index = {name: i for i, name in enumerate(self._fast.labels)}
        return self._fast

    def require_label(self, label: str) -> None:
        """Fail loudly when `label` is not one of the model's labels.

        fastText returns no probability for an unknown label, which would score every
        document 0.0 and silently remove a whole source over a typo in a manifest. A
        ResourceError, so that raised in an executor it reaches the build's user as one line."""
        if label not in self._labels():
            raise ResourceError(f"fastText model {self.model_path!r} has no label {label!r}; "
                                f"its labels are {sorted(self._labels())}: name one of them")

    def labels(self) -> list[str]:
        """The model's labels, sorted."""
        return sorted(self._labels())

    def _labels(self) -> frozenset[str]:
        if self._label_set is None:
            if self._fast is None and self._model is None:
                # Nothing loaded yet (a build's driver checking the manifest's label): the
                # dictionary alone, not GBs of matrices, and from s3:// as the manifest names it.
                self._label_set = frozenset(dictionary_labels(self.model_path))
            else:
                self._label_set = frozenset(self.fast.labels if self.fast else self.model.get_labels())
        return self._label_set

    def label_probability(self, text: str, label: str) -> float:
        """P(label) for one text: a single-line predict, no per-label dict (the filter's hot path)."""
        fast = self.fast  # loaded first, so that the label check reads its labels, not the file again
        self.require_label(label)
        if fast:
            probs = self.fast.probabilities(_numba_text(text))
            return 0.0 if probs is None else float(probs[self._label_index[label]])
        labels, probs = self.model.predict(dclm_line(text), k=-1)
        for name, p in zip(labels, probs):
            if name == label:
                return float(p)
        return 0.0

    def label_probabilities(self, texts: list[str]) -> list[dict[str, float]]:
        """All labels' probabilities for each text."""
        if self.fast:
            out = []
            for text in texts:
                probs = self.fast.probabilities(_numba_text(text))
                out.append({} if probs is None else dict(zip(self.fast.labels, map(float, probs))))
            return out
        labels, probs = self.model.predict([dclm_line(t) for t in texts], k=-1)
        return [dict(zip(ls, map(float, ps))) for ls, ps in zip(labels, probs)]


class Scorer(Protocol):
    """Pluggable document scorer (FineWeb-Edu style 0-5 models and the like)."""

    def score(self, texts: list[str]) -> np.ndarray: ...


class FastTextLabelProbability:
    """Score = P(label) from a fastText classifier (DCLM: label __label__hq)."""

    def __init__(self, model_path: str, label: str = "__label__hq", engine: str = "auto"):
        self.model = FastTextModel(model_path, engine)
        self.label = label

    def check_model(self) -> None:
        """ResourceError unless the model has `label` (see `FastTextQualityFilter.check_model`)."""
        self.model.require_label(self.label)

    def score(self, texts: list[str]) -> np.ndarray:
        self.check_model()
        return np.asarray([p.get(self.label, 0.0) for p in self.model.label_probabilities(texts)])


def _label_number(label: str, prefix: str) -> float | None:
    """The finite number after `prefix` in `label`, or None."""
    if not label.startswith(prefix):
        return None
    try:
        value = float(label[len(prefix):])
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class FastTextExpectedLabel:
    """Score = expected value of numeric labels `__label__0` .. `__label__5`.

    A fastText stand-in for the FineWeb-Edu classifier (the real one: `fineweb_edu`)."""

    def __init__(self, model_path: str, prefix: str = "__label__", engine: str = "auto"):
        self.model = FastTextModel(model_path, engine)
        self.prefix = prefix
        self._values = None  # label -> its number, once the model's labels are checked

    def check_model(self) -> None:
        """ResourceError unless every label is `prefix` and a finite number: a model with other
        labels (`quality train`'s) failed in an executor on the first label that was not one."""
        if self._values is not None:
            return
        values = {label: _label_number(label, self.prefix) for label in self.model.labels()}
        bad = [label for label, value in values.items() if value is None]
        if bad:
            raise ResourceError(f"fastText model {self.model.model_path!r} has labels that are not {self.prefix!r} "
                                f"and a number: {bad}; the expected-label scorer needs labels like "
                                f"{self.prefix}0 .. {self.prefix}5")
        self._values = values

    def score(self, texts: list[str]) -> np.ndarray:
        self.check_model()
        out = []
        for probs in self.model.label_probabilities(texts):
            total = sum(probs.values()) or 1.0
            out.append(sum(self._values[label] * p for label, p in probs.items()) / total)
        return np.asarray(out)


SCORERS = {
    "fasttext_expected_label": FastTextExpectedLabel,
    "fasttext_label_probability": FastTextLabelProbability,
}


def scorer_factory(scorer: str):
    """The callable behind a registered scorer name or a "package.module:callable" path.

    Raises ValueError starting with "scorer" (the manifest field) when the path does not
    resolve, so that a typo fails when the filter is built, not in the first tag task."""
    if scorer in SCORERS:
        return SCORERS[scorer]
    module_name, sep, attr = scorer.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"scorer must be one of {sorted(SCORERS)} or 'module:callable', got {scorer!r}")
    fresh = module_name not in sys.modules
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - whatever importing the user's module raises, it does not resolve
        raise ValueError(f"scorer {scorer!r}: module {module_name!r} cannot be imported: "
                         f"{type(exc).__name__}: {exc}") from None
    if fresh:  # the code this process runs from now on, for check_scorer_code to tell an edit since
        _LOADED_SOURCE[module_name] = _digest_text(_module_source(module))
    factory = getattr(module, attr, None)
    if not callable(factory):
        # which file: a scorer saved as `filters.py` or `json.py` resolved to dolmino's or Python's own (a tester)
        where = f" ({module.__file__})" if getattr(module, "__file__", None) else ""
        raise ValueError(f"scorer {scorer!r}: module {module_name!r}{where} has no callable {attr!r}")
    return factory


def _package_root(module) -> str | None:
    """The directory of the outermost regular package (one with an `__init__`) that holds
    `module` or is `module`; None for a module in no such package."""
    parts = module.__name__.split(".")
    for i in range(1, len(parts) + 1):
        package = sys.modules.get(".".join(parts[:i]))
        origin = getattr(package, "__file__", None)
        if getattr(package, "__path__", None) is not None and origin and \
                os.path.basename(origin).startswith("__init__.") and os.path.isfile(origin):
            return os.path.dirname(origin)
    return None


def _is_source(rel: str) -> bool:
    """A Python source file, outside caches and hidden directories (`rel`: a relative path with '/')."""
    from importlib.machinery import SOURCE_SUFFIXES

    *dirs, name = rel.split("/")
    return name.endswith(tuple(SOURCE_SUFFIXES)) and not any(d == "__pycache__" or d.startswith(".") for d in dirs)


def _python_sources(root: str) -> list[str]:
    """The Python source files under `root`, relative with '/', sorted. A symlinked directory is
    followed, as Python imports from it and `zip -r` stores its files (not one that holds the
    directory it is in: a cycle)."""
    def followed(directory: str, name: str) -> bool:
        if name == "__pycache__" or name.startswith("."):
            return False
        path = os.path.join(directory, name)
        if not os.path.islink(path):
            return True
        target, here = os.path.realpath(path), os.path.realpath(directory)
        return here != target and not here.startswith(target.rstrip(os.sep) + os.sep)

    found = []
    for directory, subdirs, files in os.walk(root, followlinks=True):
        subdirs[:] = [d for d in subdirs if followed(directory, d)]
        found += [os.path.relpath(os.path.join(directory, f), root).replace(os.sep, "/") for f in files]
    return sorted(rel for rel in found if _is_source(rel))


def _listing_digest(files: list[tuple[str, str]]) -> str:
    """SHA-256 over (relative name, file SHA-256), in name order."""
    import hashlib

    listing = hashlib.sha256()
    for rel, digest in sorted(files):
        listing.update(f"{rel}\0{digest}\n".encode("utf-8"))
    return listing.hexdigest()


def _zipped_source(module, loader) -> tuple[str, str] | None:
    """`scorer_source` of a module imported from a zip (`--py-files code.zip`): the same digest
    as the same files in a directory give, so that a scorer on the driver's PYTHONPATH and its
    zip on the executors, or a zip made again from unchanged code, key the same set."""
    import hashlib
    import zipfile
    from importlib.machinery import SOURCE_SUFFIXES

    archive = loader.archive
    inner = os.path.relpath(module.__file__, archive).replace(os.sep, "/")  # the module's member
    parts = module.__name__.split(".")
    here = inner.split("/")
    # the directories above the module's own: [prefix..., *package parts, file]
    prefix = here[:len(here) - len(parts) - (1 if here[-1].startswith("__init__.") else 0)]
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        for i in range(1, len(parts) + 1):  # the outermost regular package, as `_package_root` finds it
            package = "/".join(prefix + parts[:i]) + "/"
            if any(f"{package}__init__{suffix}" in names for suffix in SOURCE_SUFFIXES):
                members = sorted(n for n in names if n.startswith(package) and _is_source(n[len(package):]))
                return f"{archive}/{package}", _listing_digest(
                    [(n[len(package):], hashlib.sha256(zf.read(n)).hexdigest()) for n in members])
        return f"{archive}/{inner}", hashlib.sha256(zf.read(inner)).hexdigest()


def scorer_source(scorer: str) -> tuple[str, str] | None:
    """(what was hashed, its SHA-256) for a "module:callable" scorer: the code its scores come from,
    which its attribute set is keyed by, so that an edit scores the documents again instead of
    reusing scores of the old code (found by a reviewer). None where no source file is found (a
    module made in memory, a frozen or built-in one) or one cannot be read.

    A module in a package (or a package) is hashed with every Python source file of its outermost
    regular package, as a digest over (relative name, file SHA-256): a scorer is usually spread
    over its package's modules (a model wrapper, a text cleaner beside the scorer class), and a
    changed helper changes the scores as much as the named module does. An edit elsewhere in the
    package re-tags that one column needlessly; stale scores would be silent. A module in no
    package is hashed alone. Code outside the package (other top-level modules, libraries) is not
    covered. A module imported from a zip archive (`spark-submit --py-files code.zip`) is hashed
    the same way from the zip's members, so the digest names the code, not how it travelled: the
    same files in a directory on the driver and in a zip on the executors agree. Made on the
    driver for the set's key (`dolmino.build.tag.tag_plans`) and on each executor against it
    (`check_scorer_code`)."""
    scorer_factory(scorer)  # imports the module (a ValueError naming the scorer when it does not import)
    return _module_source(sys.modules[scorer.partition(":")[0]])


def _module_source(module) -> tuple[str, str] | None:
    """`scorer_source` of a module imported already."""
    import zipfile
    import zipimport

    from dolmino.checksums import sha256_file

    loader = getattr(module, "__loader__", None)
    try:
        if isinstance(loader, zipimport.zipimporter) and os.path.isfile(loader.archive):
            return _zipped_source(module, loader)
        root = _package_root(module)
        if root is not None:
            return root, _listing_digest([(rel, sha256_file(os.path.join(root, rel))) for rel in _python_sources(root)])
        origin = getattr(module, "__file__", None)
        if not origin or not os.path.isfile(origin):
            return None
        return origin, sha256_file(origin)
    except (OSError, KeyError, zipfile.BadZipFile):  # a source that cannot be read (KeyError: a zip member gone)
        return None


# Spark reuses a Python worker for the session's later jobs, with the modules it imported: the
# source digest of each scorer module when this process imported it (`scorer_factory`: in a tag
# task, or in a mix task that only decides from stored scores), to tell an edit since.
_LOADED_SOURCE: dict[str, str | None] = {}


def _digest_text(found: tuple[str, str] | None) -> str | None:
    return None if found is None else f"sha256:{found[1]}"


def _forget_module(module) -> None:
    """Drop `module` (for a module in a package: every module of its outermost package) from
    sys.modules, so that the next import reads the source files again."""
    root = _package_root(module)
    if root is None:
        names = [module.__name__]
    else:
        inside = root + os.sep
        names = [name for name, held in list(sys.modules.items())
                 if (origin := getattr(held, "__file__", None)) and os.path.abspath(origin).startswith(inside)]
    for name in names:
        sys.modules.pop(name, None)
    importlib.invalidate_caches()


def check_scorer_code(scorer: str, expected: str) -> None:
    """On an executor, before it scores: the code of a "module:callable" scorer here must be the
    code whose digest the driver keyed its attribute set by (`scorer_source`), or the set would
    store other code's scores under that key, reused by every later mix without a word.

    Two ways it is not: a node that imports other code than the driver (another version of the
    package on its PYTHONPATH) is a BuildError naming the scorer and the node; a Python worker
    that imported the module in an earlier job of the same Spark session (a notebook calling
    `build` again after editing the scorer: Spark reuses its Python workers) still runs the old
    code although the files are the new ones, so the module is imported again here. A module
    imported from a zip (`--py-files`) cannot be imported again in the same process (zipimport
    keeps the archive's old index): a BuildError asks for a new Spark session."""
    import socket

    from dolmino.errors import BuildError

    module_name = scorer.partition(":")[0]
    here = _digest_text(scorer_source(scorer))
    if here != expected:
        what = f"has SHA-256 {here[7:23]}..." if here else "cannot be found or read"
        raise BuildError(f"scorer {scorer!r}: its code on this executor ({socket.gethostname()}) {what}, the "
                         f"driver's has {expected[7:23]}...: every node must import the same code (ship it with "
                         "--py-files, or install the same version on every node), and it must not "
                         "change during the build")
    import zipimport

    module = sys.modules[module_name]
    from_zip = isinstance(getattr(module, "__loader__", None), zipimport.zipimporter)
    # Not recorded: imported by another module of its package, not by `scorer_factory`, so which
    # code it runs is unknown and it is imported again; Spark's copy of a zip does not change.
    loaded = _LOADED_SOURCE.get(module_name, here if from_zip else None)
    if loaded == here:
        _LOADED_SOURCE[module_name] = here
        return
    if from_zip:
        raise BuildError(f"scorer {scorer!r}: this Python worker imported it from a zip before the zip changed (a "
                         "Spark session used again after the edit): stop the session and start a new one")
    _forget_module(module)
    again = _digest_text(scorer_source(scorer))  # imports it again
    if again != expected:  # edited once more while it was imported
        raise BuildError(f"scorer {scorer!r}: its code changed during the build; run it again")
    _LOADED_SOURCE[module_name] = again


class ScorerError(BuildError):
    """A "module:callable" scorer failed in the user's own code, or returned what is not one number
    per text. Raised in an executor, the build said it as PySpark's traceback three times over (the
    frames, the same text as the exception's message, then all of it again in one "unexpected
    PythonException" line; found by a tester); a NaN or None score kept its document without a word
    (NaN is below no threshold). The message's first line is what the build's last line says
    (`dolmino.build.cli.executor_failure`); the lines after it, the frames of the scorer's own code
    (those below this module's), are the user's traceback, which the build prints once above it."""


def _scorer_error(scorer: str, what: str, exc: BaseException | None = None) -> ScorerError:
    """The ScorerError of `scorer`: "scorer 'm:C'" + `what` + the exception it raised, if any."""
    line = f"scorer {scorer!r}{what}"
    frames = ""
    if exc is not None:
        told = " ".join(str(exc).split())
        line += f" {type(exc).__name__}" + (f": {told}" if told else "")
        listed = traceback.extract_tb(exc.__traceback__)
        while listed and listed[0].filename == _THIS_FILE:  # the calls into the scorer, not its frames
            listed.pop(0)
        frames = "".join(traceback.format_list(listed)).rstrip("\n")
    return ScorerError(f"{line}\n{frames}" if frames else line)


def _batch(docs: list[dict]) -> str:
    """The documents of a batch by id (the first and last), where the build's message can say no more."""
    ids = [str(doc.get("id")) for doc in docs[:1] + docs[-1:]]
    if not docs:
        return "no documents"
    if len(docs) == 1:
        return f"document {ids[0]!r}"
    return f"{len(docs)} documents (ids {ids[0]!r} .. {ids[1]!r})"


def _checked_scores(scorer: str, returned, docs: list[dict]) -> np.ndarray:
    """What a scorer's `score(texts)` returned, as one float per document, or a ScorerError saying
    what it returned instead: a None or NaN score would keep its document, since it is below no
    threshold; a scalar, a 2-D array or too few values failed in PySpark's traceback."""
    try:
        scores = np.asarray(returned, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _scorer_error(scorer, f" returned a {type(returned).__name__} that is not numbers ({exc}) for "
                                    f"{_batch(docs)}; score(texts) must give one number per text") from None
    if scores.shape != (len(docs),):
        raise _scorer_error(scorer, f" returned a {type(returned).__name__} of shape {scores.shape} for "
                                    f"{_batch(docs)}; score(texts) must give one number per text, an array of shape "
                                    f"({len(docs)},)")
    missing = np.flatnonzero(np.isnan(scores))
    if missing.size:
        first = int(missing[0])
        try:
            what = "None" if returned[first] is None else "NaN"
        except Exception:  # noqa: BLE001 - a sequence that cannot be indexed: NaN is what it became
            what = "NaN"
        raise _scorer_error(scorer, f" returned {what} for {missing.size} of {_batch(docs)}, the first for "
                                    f"{docs[first].get('id')!r}: a score must be a number (NaN is below no "
                                    "min_score: the document would be kept unscored); give a low score to remove "
                                    "a document")
    return scores


_THIS_FILE = _checked_scores.__code__.co_filename  # as this module's frames name it in a traceback


def make_scorer(scorer: str, **params) -> Scorer:
    """A registered scorer name, or "package.module:callable" returning a Scorer."""
    return scorer_factory(scorer)(**params)


class FastTextQualityFilter:
    """Keep documents whose fastText P(`label`) >= `threshold` (DCLM default 0.03311014)."""

    name = "fasttext_quality"

    def __init__(self, model_path: str, label: str = "__label__hq", threshold: float = 0.03311014,
                 engine: str = "auto"):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")
        if not isinstance(label, str) or not label:  # `label: 5` failed only in an executor
            raise ValueError(f"label must be a non-empty string naming one of the model's labels, got {label!r}")
        self.scorer = FastTextLabelProbability(model_path, label, engine)
        self.threshold = float(threshold)

    # `engine` is not a tag parameter: both engines give the same probabilities (parity-tested).
    tag_params = ("model_path", "label")
    run_params = ("engine",)  # how it runs: neither the scores nor the decision
    # 2: both engines score DCLM's one-line text (`dclm_line`); stored scores of revision 1 are not reused.
    tag_revision = 2
    # Parameters naming a fastText model file: a build's driver checks them before any task.
    fasttext_model_params = ("model_path",)

    def check_model(self) -> None:
        """ResourceError (one line, naming the model's labels) unless the model has `label`.

        What a build's driver can call before any task, on a local copy of the model; scoring
        checks it too, but in an executor, after the tag phase began."""
        self.scorer.check_model()

    def tag(self, docs: list[dict]) -> dict[str, np.ndarray]:
        return {"score": self.scorer.score([doc.get("text", "") for doc in docs]).astype(np.float64)}

    def decide(self, attrs) -> str | None:
        return f"p<{number_text(self.threshold)}" if attrs["score"] < self.threshold else None

    def reject_reason(self, doc: dict) -> str | None:
        return self.decide({"score": self.scorer.model.label_probability(doc.get("text", ""), self.scorer.label)})


class ScoreThresholdFilter:
    """Keep documents whose score from a pluggable scorer is >= `min_score`.

    With `fasttext_expected_label` this is the fastText stand-in for the FineWeb-Edu rule; the
    paper's rule (BERT regression model, int_score >= 2) is the `fineweb_edu` filter.
    """

    name = "score_threshold"

    def __init__(self, scorer: str, min_score: float = 2.0, model_path: str | None = None):
        # NaN compares False with every score (nothing is ever rejected); an infinity keeps
        # everything or nothing: neither is a threshold anyone means.
        if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not math.isfinite(min_score):
            raise ValueError(f"min_score must be a finite number, got {min_score!r}")
        if not isinstance(scorer, str):
            raise ValueError(f"scorer must be one of {sorted(SCORERS)} or 'module:callable', got {scorer!r}")
        scorer_factory(scorer)  # a module path that does not import fails here, not in an executor
        if model_path is not None and (not isinstance(model_path, str) or not model_path):
            raise ValueError(f"model_path must be a non-empty string, got {model_path!r}")
        if scorer in SCORERS and model_path is None:
            raise ValueError(f"model_path is required by scorer {scorer!r} (a fastText model file)")
        self.scorer_name = scorer
        self.model_path = model_path
        self.min_score = float(min_score)
        self._scorer = None

    def __getstate__(self):
        return {**self.__dict__, "_scorer": None}

    tag_params = ("scorer", "model_path")
    tag_revision = 2  # fastText scorers score `dclm_line(text)` (see FastTextQualityFilter.tag_revision)

    @property
    def fasttext_model_params(self) -> tuple[str, ...]:
        """As FastTextQualityFilter's, for the registered (fastText) scorers; a custom scorer's
        model_path is its own business."""
        return ("model_path",) if self.scorer_name in SCORERS else ()

    def tag_source(self) -> tuple[str | None, str | None]:
        """(digest, warning) for the attribute set's key, on the driver: a "module:callable"
        scorer's `scorer_source` digest, so that an edit of its code re-tags this column; a
        registered scorer's code is dolmino's (versioned by `tag_revision`): (None, None), and
        shipped sets keep their names. A scorer whose source cannot be found is keyed by its
        name alone, with a warning that says so."""
        if self.scorer_name in SCORERS:
            return None, None
        found = scorer_source(self.scorer_name)
        if found is None:
            module = self.scorer_name.partition(":")[0]
            return None, (f"scorer {self.scorer_name!r}: the source of module {module!r} cannot be found or read, "
                          "so its scores are keyed by the scorer's name alone and an edit of its code will not be "
                          "noticed (the scores tagged before it are reused): tag into a new --attributes root after "
                          "changing it")
        return _digest_text(found), None

    def check_source(self, expected: str) -> None:
        """On an executor: its copy of the scorer's code is the one `tag_source` keyed (check_scorer_code)."""
        check_scorer_code(self.scorer_name, expected)

    def _built_scorer(self):
        if self._scorer is None:
            params = {"model_path": self.model_path} if self.model_path else {}
            self._scorer = make_scorer(self.scorer_name, **params)
        return self._scorer

    def check_model(self) -> None:
        """As `FastTextQualityFilter.check_model`, for the registered (fastText) scorers: the
        label-probability scorer's `__label__hq`, the expected-label scorer's numeric labels."""
        if self.scorer_name in SCORERS:
            self._built_scorer().check_model()

    def tag(self, docs: list[dict]) -> dict[str, np.ndarray]:
        texts = [doc.get("text", "") for doc in docs]
        if self.scorer_name in SCORERS:  # dolmino's own: its failures are ResourceErrors naming the model
            return {"score": np.asarray(self._built_scorer().score(texts), dtype=np.float64)}
        try:
            scorer = self._built_scorer()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - whatever the user's constructor raises
            raise _scorer_error(self.scorer_name, ": constructing it raised", exc) from None
        try:
            returned = scorer.score(texts)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - whatever the user's score() raises
            raise _scorer_error(self.scorer_name, f", scoring {_batch(docs)}, raised", exc) from None
        return {"score": _checked_scores(self.scorer_name, returned, docs)}

    def decide(self, attrs) -> str | None:
        return f"score<{number_text(self.min_score)}" if float(attrs["score"]) < self.min_score else None

    def reject_reason(self, doc: dict) -> str | None:
        return self.decide({"score": self.tag([doc])["score"][0]})


def _read_texts(paths: Iterable[str], quarantine=None) -> list[str]:
    """The texts of Dolma files; unreadable lines go to `quarantine` (a fresh one: dropped)."""
    from dolmino.documents import Quarantine, read_documents

    quarantine = Quarantine(keep_records=False) if quarantine is None else quarantine
    return [doc["text"] for p in paths for _, doc in read_documents(p, quarantine)]


# A word fastText reads as a label: one that starts with `__label__` (words end at these bytes).
_LABEL_WORD = re.compile(r"(?<![^ \n\r\t\v\f\x00])__label__[^ \n\r\t\v\f\x00]*")


def training_text(text: str) -> str:
    """`dclm_line(text)` without the words that start with `__label__`.

    fastText reads such a word in a training line as one more label of the example (a document
    quoting `__label__neg` was trained as negative too; any other such word became a label of
    the model), and when scoring it skips such words; dropping them trains on what is scored."""
    return _LABEL_WORD.sub("", dclm_line(text))


def train_fasttext_classifier(positives: list[str], negatives: list[str], out_path: str, *,
                              pos_label: str = "__label__hq", neg_label: str = "__label__lq",
                              seed: int = 0, epoch: int = 25, lr: float = 0.5, word_ngrams: int = 2,
                              dim: int = 64, min_count: int = 1, bucket: int = 2_000_000) -> str:
    """Train a binary fastText classifier from texts (as the paper's OWM math classifier).

    Positives are labelled `__label__hq` by default, as in DCLM's classifier, so that a
    `fasttext_quality` filter's default label names them (models of `quality train` before
    this used `__label__pos` / `__label__neg`: such a filter names `label: __label__pos`). The
    texts are `training_text`s. Training runs in a fresh spawned process: the fasttext-numpy2
    binding diverges ("Encountered NaN") on a second `train_supervised` call in one process.
    `bucket` sizes the hashed n-gram table (2M x dim floats by default, ~0.5 GB at dim 64);
    small classifiers can use far fewer.
    """
    if not positives or not negatives:
        raise ValueError("training needs at least one positive and one negative document")
    rows = [f"{pos_label} {training_text(t)}" for t in positives]
    rows += [f"{neg_label} {training_text(t)}" for t in negatives]
    random.Random(seed).shuffle(rows)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as fh:
        fh.write("\n".join(rows) + "\n")
        train_file = fh.name
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    params = dict(epoch=epoch, lr=lr, wordNgrams=word_ngrams, dim=dim, minCount=min_count, seed=seed,
                  bucket=bucket, thread=1, verbose=0)
    try:
        child = subprocess.run([sys.executable, "-I", "-c", _TRAIN_SCRIPT, train_file, out_path, json.dumps(params)],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True)
    finally:
        os.unlink(train_file)
    if child.returncode != 0 or not os.path.exists(out_path):
        why = (child.stderr.strip().splitlines() or [""])[-1]
        raise RuntimeError(f"fastText training failed (exit code {child.returncode}) for {out_path}: {why}")
    return out_path


# Training runs in a bare interpreter that imports fasttext alone (`-I`: no user site, no
# PYTHONPATH). The fasttext-numpy2 binding's result depends on the process it runs in: a second
# `train_supervised` call in one process diverges ("Encountered NaN"), and so did a first call
# in a spawned child once this module gained one unrelated import (dolmino.s3; adding
# `import json` instead did the same), on the same data and seed. The bare interpreter's
# state is the same wherever training is started from (a CLI, pytest, a Spark driver).
_TRAIN_SCRIPT = """
import json, sys
import fasttext
train_file, out_path, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
fasttext.train_supervised(train_file, **params).save_model(out_path)
"""


def percentile_report(scores: np.ndarray, weights: np.ndarray, thresholds: list[float]) -> list[dict]:
    """For each threshold: share of documents and of weight (chars/tokens) with score >= threshold."""
    total_w = float(weights.sum()) or 1.0
    return [{"threshold": t, "docs_kept": int((scores >= t).sum()),
             "share_docs": float((scores >= t).mean()) if len(scores) else 0.0,
             "share_weight": float(weights[scores >= t].sum()) / total_w} for t in thresholds]


# fastText reads its seed as a C int; 2**31 and above failed after the files were read.
_MAX_SEED = 2**31 - 1


def _check_train_args(args) -> None:
    """Refuse, before any file is read, values fastText crashes on (SIGFPE, SIGSEGV, bad_alloc) or
    trains a meaningless model with (--epoch 0, --dim 0)."""
    for flag, value in (("--epoch", args.epoch), ("--dim", args.dim), ("--word-ngrams", args.word_ngrams),
                        ("--bucket", args.bucket)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if not 0 <= args.seed <= _MAX_SEED:
        raise ValueError(f"--seed must be in [0, {_MAX_SEED}] (fastText's seed is a 32-bit int), got {args.seed}")
    _check_inputs("--pos", args.pos)
    _check_inputs("--neg", args.neg)
    from filters.outputs import check_output

    check_output("--out", args.out, [("--pos", p) for p in args.pos] + [("--neg", p) for p in args.neg])


def _check_inputs(flag: str, paths: list[str]) -> None:
    from dolmino.documents import DOCUMENT_STEMS, compression

    for path in paths:
        if compression(path, DOCUMENT_STEMS) is None:
            raise ValueError(f"{flag} {path}: unknown document file suffix (expected .jsonl, .jsonl.gz or .jsonl.zst)")
        if not path.startswith("s3://") and not os.path.isfile(path):
            raise ValueError(f"{flag} {path}: " + ("is a directory: name a file in it" if os.path.isdir(path)
                                                  else "no such file"))


def _thresholds(text: str) -> list[float]:
    """--thresholds as the filter takes a threshold: probabilities in [0, 1] (NaN is none)."""
    out = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not 0 <= value <= 1:
            raise ValueError(f"--thresholds: {item.strip()!r} is not a probability in [0, 1] "
                             "(give comma-separated numbers like 0.01,0.5)")
        out.append(value)
    return out


def _percentiles(args) -> dict:
    """The report of `percentiles` (see its --help); every argument is checked before any document is read."""
    from dolmino.documents import Quarantine
    from filters.fasttext_numba import check_fasttext_file

    thresholds = _thresholds(args.thresholds)
    _check_inputs("--input", args.input)
    if not os.path.exists(args.model):
        raise ValueError(f"--model {args.model}: no such file")
    check_fasttext_file(args.model)
    scorer = FastTextLabelProbability(args.model, args.label)
    scorer.check_model()  # names the model's labels: --label's default is DCLM's
    quarantine = Quarantine(keep_records=False)
    texts = _read_texts(args.input, quarantine)
    # As a build: blank documents are removed (tokenizer:empty_after_strip) before any filter.
    scored = [t for t in texts if t.strip()]
    scores = scorer.score(scored)
    weights = np.asarray([len(t) for t in scored], dtype=np.float64)
    return {"docs": len(scored), "blank_docs": len(texts) - len(scored), "quarantined": dict(quarantine.counts),
            "label": args.label, "rows": percentile_report(scores, weights, thresholds)}


def main(argv: list[str] | None = None) -> int:
    from dolmino.documents import Quarantine
    from dolmino.help_format import DefaultsHelpFormatter

    parser = argparse.ArgumentParser(prog="python -m filters.quality", formatter_class=DefaultsHelpFormatter,
                                     description="Train a fastText quality classifier, or see what thresholds keep.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train a fastText classifier from positive/negative Dolma files",
                        formatter_class=DefaultsHelpFormatter,
                        description="Train a binary fastText classifier: positives are labelled __label__hq\n"
                                    "(the fasttext_quality filter's default label), negatives __label__lq.")
    tr.add_argument("--pos", nargs="+", required=True, help="Dolma JSONL files of positive (kept) examples")
    tr.add_argument("--neg", nargs="+", required=True, help="Dolma JSONL files of negative examples")
    tr.add_argument("--out", required=True, type=local_path, help="model file to write (.bin)")
    tr.add_argument("--epoch", type=int, default=25, help="training epochs")
    tr.add_argument("--seed", type=int, default=0, help="shuffle seed")
    tr.add_argument("--dim", type=int, default=64, help="embedding dimension")
    tr.add_argument("--word-ngrams", type=int, default=2, help="word n-gram length (2 = bigrams, as DCLM)")
    tr.add_argument("--bucket", type=int, default=2_000_000, help="hashed n-gram rows (smaller = smaller model)")
    pc = sub.add_parser("percentiles", help="what share of a source each threshold keeps",
                        formatter_class=DefaultsHelpFormatter,
                        description="Score the documents of the --input files and report, per threshold, how many\n"
                                    "the filter keeps (docs_kept) and their share of the documents and of the\n"
                                    "characters. As in a build, blank documents (removed first, as\n"
                                    "tokenizer:empty_after_strip) are neither scored nor in the shares: they are\n"
                                    "counted as blank_docs. Unreadable lines are counted under quarantined, by reason.")
    pc.add_argument("--model", required=True, help="fastText model (.bin or .ftz)")
    pc.add_argument("--input", nargs="+", required=True, help="Dolma JSONL files to score")
    pc.add_argument("--label", default="__label__hq", help="label whose probability is the score")
    pc.add_argument("--thresholds", default="0.01,0.03311014,0.1,0.5",
                    help="comma-separated score thresholds, each in [0, 1]")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "percentiles":
            print(json.dumps(_percentiles(args), indent=2))
            return 0
        _check_train_args(args)
        quarantine = Quarantine(keep_records=False)
        positives, negatives = _read_texts(args.pos, quarantine), _read_texts(args.neg, quarantine)
        train_fasttext_classifier(positives, negatives, args.out, epoch=args.epoch, seed=args.seed, dim=args.dim,
                                  word_ngrams=args.word_ngrams, bucket=args.bucket)
    except (ValueError, OSError, RuntimeError) as exc:  # ResourceError too; a failed training is a RuntimeError
        print(f"{parser.prog} {args.cmd}: error: {exc}", file=sys.stderr)
        return 2
    if quarantine.total:
        print(f"{parser.prog} train: warning: {quarantine.total} unreadable line(s) not trained on: "
              f"{dict(quarantine.counts)}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
