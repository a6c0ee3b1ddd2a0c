"""The filter contract: a plain class with one method.

    class SomeFilter:
        name = "some_filter"                   # the `type` in manifests
        def reject_reason(self, doc) -> str | None

`None` keeps the document; a short reason removes it and is counted in the report as
"<name>:<reason>" (for example "code_stars:stars<2"). Filters compose by running in
order and stopping at the first rejection, like datatrove's pipeline steps.
"""

from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

from dolmino.errors import ManifestError

__all__ = ["DocumentFilter", "ManifestError", "apply_chain"]


@runtime_checkable
class DocumentFilter(Protocol):
    name: str

    def reject_reason(self, doc: dict) -> str | None: ...


def apply_chain(filters: Iterable[DocumentFilter], doc: dict) -> str | None:
    """The first rejection in the chain as "<filter name>:<reason>", or None to keep."""
    for f in filters:
        reason = f.reject_reason(doc)
        if reason is not None:
            return f"{f.name}:{reason}"
    return None
