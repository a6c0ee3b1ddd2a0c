"""Manifest filter specs -> filter objects.

A spec is `{"type": "<name>", ...params}`. Classes are imported lazily (decontamination
and fastText pull in heavy state) and parameters are checked against the class's
constructor so that a typo in a manifest fails at validation time, naming the field.
"""

from __future__ import annotations

import importlib
import inspect

from dolmino.errors import ManifestError, did_you_mean
from filters.base import CASCADE, needs_tokens

REGISTRY: dict[str, str] = {
    "code_stars": "filters.code:CodeStarsFilter",
    "code_word_frequency": "filters.code:CodeWordFrequencyFilter",
    "repeated_ngrams": "filters.repeated_ngrams:RepeatedNgramFilter",
    "fasttext_quality": "filters.quality:FastTextQualityFilter",
    "score_threshold": "filters.quality:ScoreThresholdFilter",
    "fineweb_edu": "filters.fineweb_edu:FineWebEduFilter",
    "min_length": "filters.length:MinLengthFilter",
    "decontaminate": "filters.decontamination:DecontaminationFilter",
}


def _check_scorer(params: dict, where: str) -> None:
    """score_threshold makes its scorer in the first tag task: a "module:callable" that imports
    but has no score(texts), such as "os:getcwd", failed there with an AttributeError (a tester)."""
    import types

    from filters.quality import SCORERS, scorer_factory

    scorer = params["scorer"]
    factory = scorer_factory(scorer)
    # a Python function is a factory returning a scorer (as documented): only calling it would tell
    if scorer in SCORERS or isinstance(factory, types.FunctionType) or callable(getattr(factory, "score", None)):
        return
    raise ManifestError(f"{where}.scorer: {scorer!r} has no score(texts) method; name one of {sorted(SCORERS)}, "
                        "a 'module:Class' whose instances have one, or a function returning such a scorer")


# Checks beyond the filter's constructor, made with it: the manifest check builds every filter.
_SPEC_CHECKS = {"score_threshold": _check_scorer}


def registered_types() -> list[str]:
    return sorted(REGISTRY)


def filter_class(type_name: str, where: str = "filter"):
    if type_name not in REGISTRY:
        raise ManifestError(f"{where}.type: unknown filter type {type_name!r}{did_you_mean(type_name, REGISTRY)} "
                            f"(known: {', '.join(registered_types())})")
    module_name, class_name = REGISTRY[type_name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ManifestError(f"{where}.type: filter {type_name!r} cannot be loaded: {exc}") from exc
    return getattr(module, class_name)


def filter_defaults(type_name: str) -> dict:
    """The parameters a filter takes when a spec leaves them out: its constructor's defaults."""
    signature = inspect.signature(filter_class(type_name).__init__)
    return {n: p.default for n, p in signature.parameters.items()
            if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty}


def build_filter(spec: dict, where: str = "filter"):
    """Build one filter from its manifest spec; errors name `where` and the field."""
    if not isinstance(spec, dict):
        raise ManifestError(f"{where}: expected an object with a 'type', got {type(spec).__name__}")
    if "type" not in spec:
        raise ManifestError(f"{where}.type: required field is missing")
    type_name = spec["type"]
    if not isinstance(type_name, str):
        raise ManifestError(f"{where}.type: expected a string, got {type_name!r}")
    cls = filter_class(type_name, where)
    params = {k: v for k, v in spec.items() if k not in ("type", CASCADE)}
    if CASCADE in spec and not isinstance(spec[CASCADE], bool):
        raise ManifestError(f"{where}.{CASCADE}: expected true or false, got {spec[CASCADE]!r}")
    signature = inspect.signature(cls.__init__)
    accepted = {n: p for n, p in signature.parameters.items()
                if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for name in params:
        if name not in accepted:
            options = [*accepted] if getattr(cls, "needs_tokens", False) is True else [*accepted, CASCADE]
            raise ManifestError(f"{where}.{name}: unknown parameter for {type_name!r}{did_you_mean(name, options)} "
                                f"(accepted: {', '.join(sorted(options)) or 'none'})")
    for name, p in accepted.items():
        if p.default is inspect.Parameter.empty and name not in params:
            raise ManifestError(f"{where}.{name}: required parameter of {type_name!r} is missing")
    try:
        filt = cls(**params)
    except ManifestError as exc:
        msg = str(exc)
        raise ManifestError(msg if msg.startswith(where) else f"{where}.{msg}") from None
    except (TypeError, ValueError) as exc:
        # Filters word their errors "<param> must be ...": point at that field when they do,
        # also when it is one left out that the other parameters make necessary.
        msg = str(exc)
        field = msg.split(" ", 1)[0]
        if field in accepted:
            raise ManifestError(f"{where}.{field}: {msg} (filter {type_name!r})") from None
        raise ManifestError(f"{where}: invalid parameters for {type_name!r}: {msg}") from None
    if type_name in _SPEC_CHECKS:
        _SPEC_CHECKS[type_name](params, where)
    if spec.get(CASCADE) and needs_tokens(filt):
        raise ManifestError(f"{where}.{CASCADE}: {type_name!r} decides on token ids in the mix phase, after every "
                            "filter the tag phase scores; cascade is for a filter the tag phase scores")
    return filt
