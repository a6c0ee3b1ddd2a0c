"""The filter contract: a plain class with one method, plus an optional tag/decide split.

    class SomeFilter:
        name = "some_filter"                   # the `type` in manifests
        def reject_reason(self, doc) -> str | None

`None` keeps the document; a short reason removes it and is counted in the report as
"<name>:<reason>" (for example "code_stars:stars<2"), or "<name>#<k>:<reason>" for the k-th of
several filters of one name that decide at the same stage (`chain_labels`). Filters compose by
running in order and stopping at the first rejection, like datatrove's pipeline steps.

Tag once, mix many. A build scores every pool document once (the *tag* phase, whose
output is stored as attribute files) and decides from the stored attributes in the *mix*
phase, so that the 50B, 100B and 300B mixes of one 800B-token pool pay for scoring once.
A filter whose decision is a threshold on something expensive splits itself in two:

    class ScoredFilter:
        tag_params = ("model_path", "label")   # the parameters that change the attributes
        def tag(self, docs: list[dict]) -> dict[str, Sequence]   # attribute columns, one row per doc
        def decide(self, attrs: Mapping) -> str | None            # the verdict from one row

Parameters not named in `tag_params` (thresholds) only change `decide`: a changed threshold
on a stored score needs no re-scoring. `run_params` (optional) names the ones that change
only how the scoring runs (a batch size, a device, an engine), the scores at most within float
rounding: a cascade's key leaves them out. `reject_reason(doc)` stays the definition, and both
halves must agree with it: `decide(row i of tag([doc]))`. Columns hold numbers, strings or
None (they are stored as Parquet).

A filter that implements only `reject_reason` is tagged with its verdict (a `reason`
column); every parameter is then a tag parameter. A filter with `needs_tokens = True`
decides on the document's dolma2 token ids (`doc["token_ids"]`): it is not tagged, and the
mix phase runs it on the documents it tokenizes (the ones the mix may take).

Any tagged filter's spec may say `"cascade": true`: the tag phase then scores only the
documents that every earlier tagged filter of the source keeps (datatrove's pipelines and
classifier cascades work so), and the other rows of its set hold no score. A BERT-sized
scorer after a cheap one pays for the cheap one's survivors only. The price: its set is
keyed by the earlier filters' settings, thresholds included, so changing one of them scores
this filter again. `cascade` is no filter parameter (`build_filter` takes it off).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from dolmino.errors import ManifestError

__all__ = ["CASCADE", "SCORED_COLUMN", "DocumentFilter", "ManifestError", "TaggingFilter", "apply_chain", "cascades",
           "chain_labels", "decide", "needs_tokens", "number_text", "tag_columns", "tag_params"]

REASON_COLUMN = "reason"
CASCADE = "cascade"  # a spec's key, not a parameter: score only what the earlier filters keep
SCORED_COLUMN = "scored"  # a cascade filter's set: whether the row was scored


@runtime_checkable
class DocumentFilter(Protocol):
    name: str

    def reject_reason(self, doc: dict) -> str | None: ...


@runtime_checkable
class TaggingFilter(Protocol):
    name: str
    tag_params: tuple[str, ...]

    def tag(self, docs: list[dict]) -> dict[str, Sequence]: ...

    def decide(self, attrs: Mapping[str, Any]) -> str | None: ...


def chain_labels(filters: Iterable) -> list[str]:
    """What each filter's removal reasons start with, in chain order: its name, and "#k" where
    the filters given (those of one stage) hold the name more than once, k counting from 1.
    Two fasttext_quality filters gave one reason, which the report merged and credited to both
    (found by a tester). Numbered per stage, as the tokenize stage sees only its own filters."""
    names = [f.name for f in filters]
    seen: dict[str, int] = {}
    labels = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        labels.append(f"{name}#{seen[name]}" if names.count(name) > 1 else name)
    return labels


def apply_chain(filters: Iterable[DocumentFilter], doc: dict) -> str | None:
    """The first rejection in the chain as "<label>:<reason>" (see `chain_labels`), or None to keep."""
    filters = list(filters)
    for f, label in zip(filters, chain_labels(filters)):
        reason = f.reject_reason(doc)
        if reason is not None:
            return f"{label}:{reason}"
    return None


def number_text(x: float) -> str:
    """A threshold as a removal reason shows it: short (`:g`) where that is exact, else in full.
    `:g` keeps 6 digits, so 0.03311014 read "0.0331101" and two thresholds could share one reason
    (found by a tester)."""
    short = format(x, "g")
    return short if float(short) == x else repr(float(x))


def needs_tokens(filt) -> bool:
    return bool(getattr(filt, "needs_tokens", False))


def cascades(spec: Mapping[str, Any]) -> bool:
    """Whether the tag phase scores only the documents the earlier tagged filters keep."""
    return spec.get(CASCADE) is True


def tag_params(filt, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a filter's manifest spec that its attributes depend on."""
    params = {k: v for k, v in spec.items() if k not in ("type", CASCADE)}
    names = getattr(filt, "tag_params", None)
    if names is None or not hasattr(filt, "tag"):
        return params
    return {k: v for k, v in params.items() if k in names}


def tag_columns(filt, docs: list[dict]) -> dict[str, list]:
    """Attribute columns for a batch of documents: the filter's own, or its verdicts."""
    if hasattr(filt, "tag") and hasattr(filt, "decide"):
        columns = filt.tag(docs)
        for name, values in columns.items():
            if len(values) != len(docs):
                raise ValueError(f"filter {filt.name!r} tagged {len(values)} rows in column {name!r} "
                                 f"for {len(docs)} documents")
        return {name: list(values) for name, values in columns.items()}
    return {REASON_COLUMN: [filt.reject_reason(d) for d in docs]}


def decide(filt, attrs: Mapping[str, Any]) -> str | None:
    """The verdict of a filter from one row of its attributes (see `tag_columns`)."""
    if hasattr(filt, "tag") and hasattr(filt, "decide"):
        return filt.decide(attrs)
    return attrs[REASON_COLUMN]
