"""The OLMo 2 (dolma2) tokenizer, wrapped so it travels to Spark executors.

The tokenizer is carried as its JSON text rather than as a file path: executors on a
cluster do not share the driver's disk, and a few MB shipped once per executor (through a
broadcast) is cheaper than making every node fetch a wheel.

Two entry points:

- `encode_documents(texts)`: what the build writes. Each document's ids exactly as they go
  into the memmap, final EOS included, under the manifest's tokenization semantics
  (docs/DESIGN.md "Tokenization"): by default those of `dolma tokens` (dolma 1.2.1), which
  produced OLMo 2's released token files, so a mix built here from the same documents holds
  the same ids per document.
- `encode_batch(texts)`: the raw ids of each text as is, no BOS/EOS, no stripping; for
  filters, the trainer and anything else that wants plain tokens.

Both go through `encode_batch_fast`, which skips character offsets (nothing here uses
them): the same ids as `encode_batch`, about 1.3x faster on one core.

Threads: the Rust tokenizer runs batches on a rayon pool sized to every CPU of the machine.
Inside a Spark Python worker (one task per core) that oversubscribes the executor, so the
build passes `threads` (or sets DOLMINO_TOKENIZER_THREADS); see `configure_threads`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dolmino.errors import ManifestError
from dolmino.manifest import TokenizerSpec

# Texts are encoded in batches of this many: large enough for the Rust tokenizer's
# parallelism to pay off, small enough to bound memory on huge documents.
ENCODE_BATCH = 256

THREADS_ENV = "DOLMINO_TOKENIZER_THREADS"

# Added tokens of this form are PII placeholders written by dolma's PII masking
# (|||EMAIL_ADDRESS|||, |||PHONE_NUMBER|||, |||IP_ADDRESS|||): the text means them, so they
# always encode to their ids. Every other added token is a control token (EOS, pad, FIM,
# chat markers, reserved extra ids) whose policy the manifest chooses.
PII_PLACEHOLDER_RE = re.compile(r"\|\|\|[A-Z][A-Z0-9_]*\|\|\|")


class EncodedDocuments(NamedTuple):
    """`encode_documents` output: per-document memmap ids and the counts the build reports."""

    ids: list[np.ndarray | None]  # uint32, final EOS included; None = skipped (empty after strip)
    skipped_empty: int            # documents skipped because their text is empty after strip()
    control_token_docs: int       # documents whose (stripped) text contains a control token string
    eos_in_span_docs: int         # documents whose ids hold EOS before their last token


# --- threads -----------------------------------------------------------------------------

_applied_threads: int | None = None


def configure_threads(threads: int | None = None) -> int | None:
    """Size the Rust tokenizer's thread use for this process; returns the count applied.

    `threads` None reads DOLMINO_TOKENIZER_THREADS; when that is unset too nothing changes
    (the library default: one rayon thread per CPU). What the `tokenizers` library honours:
    TOKENIZERS_PARALLELISM is read on every batch call ("false" runs batches serially on the
    calling thread, no pool at all), and RAYON_NUM_THREADS is read once, when rayon builds
    its global pool on the first parallel batch of the process. So 1 thread sets
    TOKENIZERS_PARALLELISM=false, and n > 1 sets it true and RAYON_NUM_THREADS=n, which only
    takes effect if no parallel batch has run in this process yet (a warning says so).
    """
    global _applied_threads
    if threads is None:
        value = os.environ.get(THREADS_ENV, "").strip()
        if not value:
            return _applied_threads
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}") from None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"tokenizer threads must be a positive integer, got {threads!r}")
    if threads == _applied_threads:
        return threads
    if threads > 1 and _applied_threads is not None and _applied_threads > 1:
        warnings.warn(f"tokenizer threads {threads} requested after {_applied_threads}: the rayon pool of this "
                      f"process may already be built with {_applied_threads} threads", RuntimeWarning, stacklevel=2)
    if threads == 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        os.environ["RAYON_NUM_THREADS"] = str(threads)
    _applied_threads = threads
    return threads


# --- the tokenizer -----------------------------------------------------------------------

def tokenizer_json(spec: TokenizerSpec) -> str:
    """The tokenizer's JSON definition, from `spec.path` (a local file or an s3:// object) or
    the packaged dolma2 file.

    Only the driver reads it; executors get the text in a broadcast, so an s3:// tokenizer
    needs no copy on any node."""
    if not spec.path:
        from dolmino.assets import dolma2_tokenizer_path

        return dolma2_tokenizer_path().read_text(encoding="utf-8")
    from dolmino.s3 import S3ObjectError, about, open_uri

    # Each failure one line naming tokenizer.path: an unreadable file was a JSONDecodeError
    # traceback, a missing or denied object named no tokenizer (found by a tester).
    try:
        if spec.path.startswith("s3://"):
            with about(spec.path), open_uri(spec.path) as fh:
                text = fh.read().decode("utf-8")
        else:
            text = Path(spec.path).read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, PermissionError, S3ObjectError) as exc:
        raise ManifestError(f"tokenizer.path: {exc}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"tokenizer.path {spec.path}: not UTF-8 text; expected a tokenizer.json") from None
    try:
        definition = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"tokenizer.path {spec.path}: not JSON (line {exc.lineno}: {exc.msg}); expected a "
                            "tokenizer.json as Hugging Face tokenizers saves it") from None
    if not isinstance(definition, dict):
        raise ManifestError(f"tokenizer.path {spec.path}: a JSON {type(definition).__name__}, not a tokenizer "
                            "definition; expected a tokenizer.json as Hugging Face tokenizers saves it")
    return text


def _control_token_pattern(tokens: list[str]) -> tuple[str, re.Pattern | None]:
    """(common prefix, regex) finding any of `tokens` in a text; ("", None) when there are none.

    The prefix (e.g. "<|") is a cheap `in` test that clears almost every document before
    the regex runs; longer alternatives first so the regex never stops at a shorter one.
    """
    if not tokens:
        return "", None
    prefix = os.path.commonprefix(tokens)
    pattern = re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))
    return prefix, pattern


# Built tokenizers of this process, by the SHA-256 of their JSON (and, for the document
# backend, the control-token policy). A build broadcasts a new tokenizer object for each
# phase, and each Python worker unpickles it again: without this, every worker parsed the
# same 2.6 MB of JSON again per phase and per build of a session (0.18-0.22 s, plus 0.065 s
# for the control-token table, measured), once per worker process now. The backends are
# immutable after their build, and the `tokenizers` objects are safe to share across threads.
_BUILT: dict[tuple, object] = {}
_BUILT_MAX = 4


def _remember(key: tuple, value):
    """Keep a newly built tokenizer (callers ask only after a miss), dropping the oldest beyond _BUILT_MAX."""
    _BUILT[key] = value
    while len(_BUILT) > _BUILT_MAX:  # dicts keep insertion order
        _BUILT.pop(next(iter(_BUILT)))
    return value


def control_id_problems(json_text: str, eos_token_id: int, bos_token_id: int | None) -> list[str]:
    """What is wrong with the ids a build writes around each document, one text per field.

    EOS (and BOS, when set) must be one of the tokenizer's added tokens: an id of ordinary
    text (`"eos_token_id": 0` is "!" in dolma2) would end every document with a character
    that text also encodes to, and nothing downstream could find the documents' ends."""
    added = json.loads(json_text).get("added_tokens") or []
    ids = {a["id"] for a in added}
    special = [f"{a['content']} = {a['id']}" for a in sorted(added, key=lambda a: a["id"]) if a.get("special")]
    named = ", ".join(special[:4]) + (", ..." if len(special) > 4 else "")
    return [f"tokenizer.{name}: {value} is not one of the tokenizer's added tokens (special ones: {named})"
            for name, value in (("eos_token_id", eos_token_id), ("bos_token_id", bos_token_id))
            if value is not None and value not in ids]


def _encode_with(tok, texts: list[str]) -> list[np.ndarray]:
    """`tok`'s ids of each text, in batches of ENCODE_BATCH, nothing added."""
    out: list[np.ndarray] = []
    for i in range(0, len(texts), ENCODE_BATCH):
        encodings = tok.encode_batch_fast(texts[i:i + ENCODE_BATCH], add_special_tokens=False)
        out.extend(np.asarray(e.ids, dtype=np.uint32) for e in encodings)
    return out


class Dolma2Tokenizer:
    """Picklable tokenizer: built lazily from JSON text on first use in each process.

    `semantics` "dolma" (default) strips each text, skips documents empty after stripping
    and appends EOS unless the ids already end in it (BOS, when set, is prepended unless
    already first); "raw" encodes the text as is and always appends EOS (and BOS).
    `control_tokens` "dolma" (default) lets control-token strings in text (<|endoftext|>,
    <|pad|>, ...) encode to their ids, as `dolma tokens` does; "literal" encodes them as the
    characters they are. PII placeholders encode to their ids under both.
    """

    def __init__(self, json_text: str, eos_token_id: int = 100257, vocab_size: int = 100278, *,
                 semantics: str = "dolma", control_tokens: str = "dolma", bos_token_id: int | None = None,
                 threads: int | None = None):
        if semantics not in TokenizerSpec.SEMANTICS:
            raise ValueError(f"semantics must be one of {TokenizerSpec.SEMANTICS}, got {semantics!r}")
        if control_tokens not in TokenizerSpec.CONTROL_TOKEN_POLICIES:
            raise ValueError(f"control_tokens must be one of {TokenizerSpec.CONTROL_TOKEN_POLICIES}, "
                             f"got {control_tokens!r}")
        self.json_text = json_text
        self.eos_token_id = eos_token_id
        self.vocab_size = vocab_size
        self.semantics = semantics
        self.control_tokens = control_tokens
        self.bos_token_id = bos_token_id
        self.threads = threads
        self._reset()

    def _reset(self) -> None:
        self._tok = None          # raw: every added token matched in text (encode_batch)
        self._doc_tok = None      # encode_documents: the control-token policy applied
        self._control_prefix = ""
        self._control_re = None

    @classmethod
    def from_spec(cls, spec: TokenizerSpec, threads: int | None = None) -> "Dolma2Tokenizer":
        return cls(tokenizer_json(spec), spec.eos_token_id, spec.vocab_size, semantics=spec.semantics,
                   control_tokens=spec.control_tokens, bos_token_id=spec.bos_token_id, threads=threads)

    _STATE = ("json_text", "eos_token_id", "vocab_size", "semantics", "control_tokens", "bos_token_id", "threads")

    def __getstate__(self):
        # The digest travels too: a worker then finds its built tokenizer without hashing the JSON.
        return {**{k: getattr(self, k) for k in self._STATE}, "_json_digest": self.json_digest}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    @property
    def json_digest(self) -> str:
        """SHA-256 of the JSON definition: the key of this process's built tokenizers."""
        digest = self.__dict__.get("_json_digest")
        if digest is None:
            import hashlib

            digest = self.__dict__["_json_digest"] = hashlib.sha256(self.json_text.encode("utf-8")).hexdigest()
        return digest

    def _build(self, json_text: str):
        from tokenizers import Tokenizer

        return self._checked(Tokenizer.from_str(json_text))

    def _checked(self, tok):
        actual = tok.get_vocab_size()
        if actual > self.vocab_size:
            raise ValueError(f"tokenizer has {actual} tokens but the manifest says vocab_size {self.vocab_size}")
        return tok

    @property
    def backend(self):
        """The `tokenizers.Tokenizer` as its JSON defines it (every added token matched in text)."""
        if self._tok is None:
            configure_threads(self.threads)
            key = ("raw", self.json_digest)
            tok = _BUILT.get(key)
            # A remembered one is checked against this instance's declared vocabulary too.
            self._tok = _remember(key, self._build(self.json_text)) if tok is None else self._checked(tok)
        return self._tok

    @property
    def document_backend(self):
        """The tokenizer `encode_documents` uses: the control-token policy applied."""
        if self._doc_tok is None:
            backend = self.backend  # threads configured, vocabulary checked
            key = ("documents", self.json_digest, self.control_tokens)
            built = _BUILT.get(key)
            if built is None:
                built = _remember(key, self._document_backend(backend))
            self._doc_tok, self._control_prefix, self._control_re = built
        return self._doc_tok

    def _document_backend(self, backend) -> tuple:
        """(tokenizer, control-token prefix, control-token regex) under this control-token policy."""
        definition = json.loads(self.json_text)
        added = definition.get("added_tokens") or []
        control = [a["content"] for a in added if not PII_PLACEHOLDER_RE.fullmatch(a["content"])]
        prefix, pattern = _control_token_pattern(control)
        if self.control_tokens == "dolma":
            return backend, prefix, pattern
        # `encode_special_tokens` (dolma's --tokenizer.encode_special_tokens) leaves tokens
        # marked special as plain text; marking exactly the control tokens special (the
        # dolma2 file leaves <|extra_id_N|> unmarked) and the PII placeholders not special
        # makes it split every control token and match every placeholder.
        for a in added:
            a["special"] = not PII_PLACEHOLDER_RE.fullmatch(a["content"])
        tok = self._build(json.dumps(definition))
        tok.encode_special_tokens = True
        return tok, prefix, pattern

    def encode(self, text: str) -> np.ndarray:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Raw ids of each text as is: no stripping, no BOS/EOS, every added token matched."""
        return _encode_with(self.backend, texts)

    def encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        """Ids of each text as a document's text encodes (the control-token policy applied), without
        stripping or BOS/EOS: what a model trained on this tokenizer's documents is prompted with."""
        return _encode_with(self.document_backend, texts)

    def encode_documents(self, texts: list[str]) -> EncodedDocuments:
        """Each document's ids as the memmap will hold them, final EOS included.

        Under "dolma" semantics a text empty after `str.strip()` is skipped (ids None,
        counted in `skipped_empty`); so is one whose ids come out empty (dolma would write a
        zero-length row; a byte-level BPE never produces one from non-empty text).
        """
        tok = self.document_backend
        eos, bos = self.eos_token_id, self.bos_token_id
        dolma = self.semantics == "dolma"
        prepared = [t.strip() for t in texts] if dolma else texts
        ids: list[np.ndarray | None] = [None] * len(prepared)
        # Skipped documents are rare: encode the list as is unless there is one.
        todo = list(range(len(prepared))) if all(prepared) or not dolma else [
            i for i, t in enumerate(prepared) if t]
        skipped = len(prepared) - len(todo)
        flagged = self._control_token_docs(prepared)
        for lo in range(0, len(todo), ENCODE_BATCH):
            chunk = todo[lo:lo + ENCODE_BATCH]
            batch = prepared[lo:lo + ENCODE_BATCH] if len(todo) == len(prepared) else [prepared[i] for i in chunk]
            for i, encoding in zip(chunk, tok.encode_batch_fast(batch, add_special_tokens=False)):
                seq = encoding.ids
                if dolma:
                    if not seq:
                        skipped += 1
                        continue
                    if bos is not None and seq[0] != bos:
                        seq.insert(0, bos)
                    if seq[-1] != eos:
                        seq.append(eos)
                else:
                    if bos is not None:
                        seq.insert(0, bos)
                    seq.append(eos)
                ids[i] = np.array(seq, dtype=np.uint32)
        eos_in_span = sum(1 for i in flagged if ids[i] is not None and bool((ids[i][:-1] == eos).any()))
        return EncodedDocuments(ids, skipped, len(flagged), eos_in_span)

    def _control_token_docs(self, texts: list[str]) -> list[int]:
        """Indices of texts containing a control token string (the tokenizer matches the same
        strings: added tokens are matched on the raw text, and no control token overlaps a
        placeholder)."""
        pattern, prefix = self._control_re, self._control_prefix
        if pattern is None:
            return []
        if prefix:
            search = pattern.search
            return [i for i, t in enumerate(texts) if prefix in t and search(t)]
        return [i for i, t in enumerate(texts) if pattern.search(t)]

    def decode(self, ids) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)
