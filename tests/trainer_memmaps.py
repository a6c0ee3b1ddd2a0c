"""Small built mixes of real text for the trainer tests (not a test module itself).

Documents from the shared corpus are tokenized with the dolma2 tokenizer and written by
dolmino's own part writer, so the trainer reads exactly what `build_mix` emits: raw uint32
tokens with EOS after each document, a `.csv.gz` sidecar and a `.label_mask.npy`. Where
the tokenizer wheel is not cached, the text's UTF-8 bytes stand in for token ids (still
real text, still the writer's format).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
EOS = 100257


def _encoder():
    try:
        from tokenizers import Tokenizer

        from dolmino.assets import dolma2_tokenizer_path

        tok = Tokenizer.from_file(str(dolma2_tokenizer_path()))
        return lambda text: tok.encode(text, add_special_tokens=False).ids
    except Exception:  # tokenizer wheel not cached here
        return lambda text: list(text.encode("utf-8"))


def write_real_text_mix(out_dir: Path, n_parts: int, tokens_per_part: int, source: str = "web",
                        mask_every: int = 7) -> Path:
    """`n_parts` parts of at least `tokens_per_part` tokens each; every `mask_every`-th token
    of each document is label-masked (as a prompt / chat template mask would be)."""
    from dolmino.documents import Quarantine, read_documents
    from dolmino.memmap import MemmapPartWriter

    path = CORPUS / f"{source}.jsonl.zst"
    if not path.exists():
        pytest.skip(f"shared corpus file {path} is missing (CI clones the repo with shared/ beside it)")
    encode = _encoder()
    docs = read_documents(str(path), Quarantine())
    for part in range(n_parts):
        writer = MemmapPartWriter(str(out_dir), part, eos_token_id=EOS, label_mask=True)
        while writer.stats.tokens < tokens_per_part:
            line, doc = next(docs)
            ids = np.asarray(encode(doc["text"])[:600], dtype=np.uint32)
            mask = np.arange(len(ids)) % mask_every != mask_every - 1
            writer.add(ids, doc["id"], source, f"{source}:{line}", mask=mask)
        writer.close()
    # What a finished build writes last (its completion marker), with the fields the trainer reads.
    tokens = sum(p.stat().st_size for p in out_dir.glob("part-*.npy") if not p.name.endswith(".label_mask.npy")) // 4
    certified = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out_dir.glob("part-*"))}
    (out_dir / "report.json").write_text(json.dumps({"manifest": "test-mix",
                                                     "output": {"tokens": tokens, "files_sha256": certified}}))
    return out_dir
