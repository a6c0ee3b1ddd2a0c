"""fastText supervised inference without fastText: the .bin read by numpy, scored by numba.

Why: quality scoring (DCLM's fastText classifier) runs over every web document, and the
fastText binding spends most of its time outside the arithmetic: a string stream read one
character at a time, a std::string per word, a vector push per row. Scoring the UTF-8
bytes in one compiled pass gives the same probabilities several times faster per core,
and the input matrix is memory-mapped straight from the .bin, so all Spark executors on a
host share one page-cache copy of a multi-GB model instead of each holding its own.

What is reproduced (fastText 0.9 `predict` on one line, i.e. `FastText::predictLine`):
- words split on ' ', '\\n', '\\r', '\\t', '\\v', '\\f', '\\0', then the end-of-line word
  `</s>` (a literal `</s>` in the text ends the line there, as in fastText); a word found
  in the dictionary adds its input row, a label word is skipped, an unknown word adds no
  row (no subwords: minn = maxn = 0) but takes part in word n-grams, unless it starts with
  `__label__`;
- word n-grams (wordNgrams > 1): FNV-1a word hashes with fastText's signed-char quirk,
  combined as `h = h * 116049371 + hash` in uint64 (int32 hashes sign-extended), row
  `nwords + h % bucket`;
- hidden = mean of the rows (float32, words then n-grams), output = W_out . hidden, then
  softmax (loss softmax) or fastText's 512-entry sigmoid table (loss ns / ova);
- the probability fastText returns is `exp(log(p + 1e-5))`: reproduced, so thresholds
  computed with fastText (DCLM's 0.03311014) mean the same here.

Not covered, and left to the fastText binding (`load_fasttext_numba` returns None):
quantized models (.ftz), hierarchical softmax, character n-grams (maxn > 0), pruned
dictionaries. Parity with the binding is tested in tests/test_fasttext_numba.py.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from numba import njit

from dolmino.errors import ResourceError

FASTTEXT_MAGIC = 793712314
FASTTEXT_VERSION = 12
LOSS_HS, LOSS_NS, LOSS_SOFTMAX, LOSS_OVA = 1, 2, 3, 4
EOS = b"</s>"
_LABEL_PREFIX_8 = int.from_bytes(b"__label_", "little")  # < 2**63: the same as a signed int64
_EOS_PREFIX = int.from_bytes(EOS, "little")
_SIGMOID_TABLE_SIZE = 512
_MAX_SIGMOID = 8.0


def fasttext_hash(word: bytes) -> int:
    """fastText's Dictionary::hash: 32-bit FNV-1a over signed chars (bytes >= 0x80 sign-extend)."""
    h = 2166136261
    for b in word:
        h ^= b if b < 128 else (b | 0xFFFFFF00)
        h = (h * 16777619) & 0xFFFFFFFF
    return h


@njit(cache=True, nogil=True)
def _hash_and_prefix(buf, start, end):  # pragma: no cover - compiled
    """fastText's FNV-1a hash of buf[start:end] and its first 8 bytes packed little-endian."""
    h = np.uint64(2166136261)
    prefix = np.int64(0)
    for i in range(start, end):
        byte = buf[i]
        if i - start < 8:
            prefix |= np.int64(byte) << np.int64(8 * (i - start))
        b = np.uint64(byte)
        if b >= 128:
            b |= np.uint64(0xFFFFFF00)
        h = ((h ^ b) * np.uint64(16777619)) & np.uint64(0xFFFFFFFF)
    return h, prefix


@njit(cache=True, nogil=True)
def _lookup(buf, start, end, h, prefix, slots, vocab_bytes, vocab_offsets):  # pragma: no cover - compiled
    """Dictionary entry of buf[start:end], or -1.

    Open addressing on the FNV hash; a slot holds the word's first 8 bytes and its length next
    to the entry id, so a word of <= 8 bytes (most words) is matched in one cache line."""
    mask = slots.shape[0] - 1
    slot = np.int64(h) & mask
    n = end - start
    short_len = min(n, 255)
    while True:
        meta = slots[slot, 1]
        if meta < 0:
            return -1
        if (meta & 255) == short_len and slots[slot, 0] == prefix:
            entry = meta >> 8
            if n <= 8:
                return entry
            s = vocab_offsets[entry]
            if vocab_offsets[entry + 1] - s == n:
                same = True
                for k in range(8, n):
                    if vocab_bytes[s + k] != buf[start + k]:
                        same = False
                        break
                if same:
                    return entry
        slot = (slot + 1) & mask


@njit(cache=True, nogil=True)
def _is_space(b):  # pragma: no cover - compiled
    return b == 32 or b == 10 or b == 13 or b == 9 or b == 11 or b == 12 or b == 0


@njit(cache=True, nogil=True)
def _input_rows(buf, slots, vocab_bytes, vocab_offsets, is_label, nwords, word_ngrams, bucket,
                eos_hash, eos_entry):  # pragma: no cover - compiled
    """The input-matrix rows fastText's getLine gives for one line: words in order, then word n-grams."""
    n_bytes = buf.shape[0]
    max_words = n_bytes // 2 + 2
    if n_bytes > 1 << 20:  # big line: count the words instead of sizing for the worst case
        max_words = 1
        j = 0
        while j < n_bytes:
            while j < n_bytes and _is_space(buf[j]):
                j += 1
            if j < n_bytes:
                max_words += 1
                while j < n_bytes and not _is_space(buf[j]):
                    j += 1
    hashes = np.empty(max_words, dtype=np.int64)  # sign-extended int32 word hashes
    rows = np.empty(max_words * max(1, word_ngrams), dtype=np.int64)
    n_hashes = 0
    n_rows = 0
    i = 0
    at_end = False
    while not at_end:
        while i < n_bytes and _is_space(buf[i]):
            i += 1
        if i < n_bytes:
            start = i
            while i < n_bytes and not _is_space(buf[i]):
                i += 1
            h, prefix = _hash_and_prefix(buf, start, i)
            if i - start == 4 and prefix == _EOS_PREFIX:
                at_end = True  # fastText ends the line at a literal "</s>" word too
            entry = _lookup(buf, start, i, h, prefix, slots, vocab_bytes, vocab_offsets)
            if entry >= 0:
                if is_label[entry]:
                    continue
                rows[n_rows] = entry
                n_rows += 1
            elif i - start >= 9 and prefix == _LABEL_PREFIX_8 and buf[start + 8] == 95:
                continue  # an unknown "__label__..." word is a label to fastText, not a word
        else:  # end of line: fastText's "</s>" word
            at_end = True
            h = eos_hash
            if eos_entry >= 0:
                rows[n_rows] = eos_entry
                n_rows += 1
        hv = np.int64(h)
        if hv >= 2147483648:
            hv -= 4294967296
        hashes[n_hashes] = hv
        n_hashes += 1
    if bucket > 0:
        for a in range(n_hashes):
            g = np.uint64(hashes[a])
            for b in range(a + 1, min(n_hashes, a + word_ngrams)):
                g = g * np.uint64(116049371) + np.uint64(hashes[b])
                rows[n_rows] = nwords + np.int64(g % np.uint64(bucket))
                n_rows += 1
    return rows[:n_rows]


@njit(cache=True, nogil=True)
def _activate(logits, loss, sigmoid_table):  # pragma: no cover - compiled
    """fastText's output layer on float32 logits: softmax, or its 512-entry sigmoid table (ns, ova)."""
    n_out = logits.shape[0]
    probs = logits.copy()
    if loss == LOSS_SOFTMAX:
        top = probs[0]
        for o in range(n_out):
            top = max(top, probs[o])
        z = np.float32(0.0)
        for o in range(n_out):
            probs[o] = np.exp(probs[o] - top)
            z += probs[o]
        for o in range(n_out):
            probs[o] /= z
    else:
        for o in range(n_out):
            x = probs[o]
            if x < -8.0:
                probs[o] = 0.0
            elif x > 8.0:
                probs[o] = 1.0
            else:  # float32 throughout, as fastText's `(x + MAX_SIGMOID) * SIGMOID_TABLE_SIZE / MAX_SIGMOID / 2`
                probs[o] = sigmoid_table[np.int64((x + np.float32(8.0)) * np.float32(512.0) / np.float32(8.0)
                                                  / np.float32(2.0))]
    return probs


@njit(cache=True, nogil=True)
def _predict_rows(buf, slots, vocab_bytes, vocab_offsets, is_label, nwords, word_ngrams, bucket,
                  eos_hash, eos_entry, input_matrix, output_matrix, loss, sigmoid_table):  # pragma: no cover
    """fastText's own arithmetic: float32 mean of the input rows, then W_out . hidden."""
    rows = _input_rows(buf, slots, vocab_bytes, vocab_offsets, is_label, nwords, word_ngrams, bucket,
                       eos_hash, eos_entry)
    dim = input_matrix.shape[1]
    n_out = output_matrix.shape[0]
    count = rows.shape[0]
    if count == 0:
        return np.zeros(n_out, dtype=np.float32), False
    hidden = np.zeros(dim, dtype=np.float32)
    for r in range(count):  # rows in fastText's order: the float32 sums come out identical
        row = input_matrix[rows[r]]
        for d in range(dim):
            hidden[d] += row[d]
    scale = np.float32(1.0 / count)
    for d in range(dim):
        hidden[d] *= scale
    logits = np.zeros(n_out, dtype=np.float32)
    for o in range(n_out):
        acc = np.float32(0.0)
        for d in range(dim):
            acc += output_matrix[o, d] * hidden[d]
        logits[o] = acc
    return _activate(logits, loss, sigmoid_table), True


@njit(cache=True, nogil=True)
def _predict_projected(buf, slots, vocab_bytes, vocab_offsets, is_label, nwords, word_ngrams, bucket,
                       eos_hash, eos_entry, projected, loss, sigmoid_table):  # pragma: no cover - compiled
    """W_out . mean(rows) computed as mean(W_out . row): nlabels float64 per row instead of dim floats."""
    rows = _input_rows(buf, slots, vocab_bytes, vocab_offsets, is_label, nwords, word_ngrams, bucket,
                       eos_hash, eos_entry)
    n_out = projected.shape[1]
    count = rows.shape[0]
    if count == 0:
        return np.zeros(n_out, dtype=np.float32), False
    acc = np.zeros(n_out, dtype=np.float64)
    for r in range(count):
        row = projected[rows[r]]
        for o in range(n_out):
            acc[o] += row[o]
    logits = np.empty(n_out, dtype=np.float32)
    for o in range(n_out):
        logits[o] = acc[o] / count
    return _activate(logits, loss, sigmoid_table), True


@njit(cache=True, nogil=True)
def _build_slots(vocab_bytes, vocab_offsets, size):  # pragma: no cover - compiled
    """The open-addressing table `_lookup` probes; a repeated entry keeps its first id, as fastText's."""
    slots = np.full((size, 2), -1, dtype=np.int64)
    mask = size - 1
    for idx in range(vocab_offsets.shape[0] - 1):
        start, end = vocab_offsets[idx], vocab_offsets[idx + 1]
        h, prefix = _hash_and_prefix(vocab_bytes, start, end)
        if _lookup(vocab_bytes, start, end, h, prefix, slots, vocab_bytes, vocab_offsets) >= 0:
            continue
        slot = np.int64(h) & mask
        while slots[slot, 1] >= 0:
            slot = (slot + 1) & mask
        slots[slot, 0] = prefix
        slots[slot, 1] = (idx << 8) | min(end - start, 255)
    return slots


@njit(cache=True, nogil=True)
def _parse_dictionary(buf, pos, n_entries):  # pragma: no cover - compiled
    """fastText's dictionary entries (word bytes, NUL, int64 count, int8 type) packed; end position or -1."""
    offsets = np.zeros(n_entries + 1, dtype=np.int64)
    kinds = np.zeros(n_entries, dtype=np.int8)
    starts = np.empty(n_entries, dtype=np.int64)
    n = buf.shape[0]
    total = 0
    for e in range(n_entries):
        start = pos
        while pos < n and buf[pos] != 0:
            pos += 1
        if pos + 10 > n:
            return np.zeros(0, dtype=np.uint8), offsets, kinds, -1
        starts[e] = start
        total += pos - start
        offsets[e + 1] = total
        kinds[e] = buf[pos + 9]
        pos += 10
    packed = np.empty(total, dtype=np.uint8)
    for e in range(n_entries):
        packed[offsets[e]:offsets[e + 1]] = buf[starts[e]:starts[e] + offsets[e + 1] - offsets[e]]
    return packed, offsets, kinds, pos


def _packed_prefix(word: bytes) -> int:
    """The first 8 bytes of `word`, little-endian, as a signed int64 (what `_hash_and_prefix` packs)."""
    value = int.from_bytes(word[:8], "little")
    return value - (1 << 64) if value >= 1 << 63 else value


def _sigmoid_table() -> np.ndarray:
    x = (np.arange(_SIGMOID_TABLE_SIZE + 1, dtype=np.float32) * np.float32(2 * _MAX_SIGMOID)
         / np.float32(_SIGMOID_TABLE_SIZE) - np.float32(_MAX_SIGMOID))
    return (np.float32(1.0) / (np.float32(1.0) + np.exp(-x))).astype(np.float32)


class FastTextNumba:
    """A supervised fastText model read from its .bin; `probabilities(text)` as fastText's predict.

    With few labels (nlabels <= dim / 2: every quality classifier) the output layer is folded
    into the input matrix once at load, `projected = input_matrix @ W_out.T` in float64, so
    a document costs nlabels numbers per row instead of dim: the mean and the dot product
    commute, and the float64 sums are at least as exact as fastText's float32 ones (the
    probabilities agree to ~1e-6). `projected=False` keeps fastText's own float32 order of
    operations, bit for bit.
    """

    def __init__(self, *, labels, nwords, word_ngrams, bucket, loss, vocab_bytes, vocab_offsets, input_matrix,
                 output_matrix, projected: bool | None = None):
        """`vocab_bytes` / `vocab_offsets`: the dictionary's words then its labels, packed (entry i is
        vocab_bytes[vocab_offsets[i]:vocab_offsets[i + 1]]), in fastText's id order."""
        self.labels = list(labels)
        self.nwords = int(nwords)
        self.word_ngrams = int(word_ngrams)
        self.bucket = int(bucket)
        self.loss = int(loss)
        self.input_matrix = input_matrix
        self.output_matrix = np.ascontiguousarray(output_matrix, dtype=np.float32)
        self.vocab_bytes = vocab_bytes if len(vocab_bytes) else np.zeros(1, dtype=np.uint8)
        self.vocab_offsets = vocab_offsets
        n_entries = len(vocab_offsets) - 1
        self.is_label = np.zeros(n_entries, dtype=np.bool_)
        self.is_label[self.nwords:] = True
        self.slots = _build_slots(self.vocab_bytes, self.vocab_offsets, 1 << max(4, (2 * n_entries).bit_length()))
        self.eos_hash = np.uint64(fasttext_hash(EOS))
        eos = np.frombuffer(EOS, dtype=np.uint8)
        self.eos_entry = int(_lookup(eos, 0, len(EOS), self.eos_hash, _packed_prefix(EOS), self.slots,
                                     self.vocab_bytes, self.vocab_offsets))
        self.sigmoid_table = _sigmoid_table()
        if projected is None:
            projected = len(self.labels) <= input_matrix.shape[1] // 2
        self.projected = _project(input_matrix, self.output_matrix) if projected else None

    def _common_args(self, buf):
        return (buf, self.slots, self.vocab_bytes, self.vocab_offsets, self.is_label, self.nwords,
                self.word_ngrams, self.bucket, self.eos_hash, self.eos_entry)

    def probabilities(self, text: str) -> np.ndarray | None:
        """Per-label probabilities as fastText returns them (p + 1e-5), or None when the line has no rows."""
        buf = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        if self.projected is not None:
            probs, ok = _predict_projected(*self._common_args(buf), self.projected, self.loss, self.sigmoid_table)
        else:
            probs, ok = _predict_rows(*self._common_args(buf), self.input_matrix, self.output_matrix, self.loss,
                                      self.sigmoid_table)
        if not ok:
            return None
        return np.exp(np.log(probs + np.float32(1e-5)))


def _project(input_matrix: np.ndarray, output_matrix: np.ndarray, chunk_rows: int = 1 << 16) -> np.ndarray:
    """input_matrix @ output_matrix.T in float64, streamed over the (memory-mapped) input in chunks."""
    out = np.empty((input_matrix.shape[0], output_matrix.shape[0]), dtype=np.float64)
    w = output_matrix.astype(np.float64).T
    for start in range(0, input_matrix.shape[0], chunk_rows):
        np.matmul(input_matrix[start:start + chunk_rows].astype(np.float64), w, out=out[start:start + chunk_rows])
    return out


def _dense_matrix(mm: np.memmap, pos: int, size: int, path: str, what: str, rows: int, dim: int):
    """(float32 rows x dim view into the file, position after it), or (None, pos) when quantized.

    fastText writes a matrix as a `quantized` bool, then int64 rows, int64 cols, float32 data."""
    if pos + 17 > size:
        raise ResourceError(f"{path}: truncated before the {what} matrix")
    if mm[pos]:
        return None, pos + 1
    got_rows, got_cols = struct.unpack("<qq", bytes(mm[pos + 1:pos + 17]))
    pos += 17
    if got_cols != dim or got_rows != rows or pos + got_rows * got_cols * 4 > size:
        raise ResourceError(f"{path}: {what} matrix {got_rows}x{got_cols} does not match {rows} rows x dim {dim} "
                            "(truncated or not a supervised fastText model)")
    return np.ndarray((rows, dim), dtype=np.float32, buffer=mm, offset=pos), pos + rows * dim * 4


def check_fasttext_file(path: str) -> None:
    """Raise ResourceError unless `path` is a file that starts with fastText's magic number.

    Both formats (.bin, and quantized .ftz) start with it. Without this check a file that is
    no model at all reaches the binding, whose "has wrong file format!" says neither which
    filter's model it was nor, inside an executor, anything short of a Spark traceback."""
    if os.path.isdir(path):
        check_fasttext_head(path, None)
    with open(path, "rb") as fh:
        check_fasttext_head(path, fh.read(4))


def check_fasttext_head(path: str, head: bytes | None) -> None:
    """`check_fasttext_file` on a model's first four bytes (None: it is a directory), which a
    build's driver reads before any task starts, also from an s3:// model."""
    if head is None:
        raise ResourceError(f"fastText model {path!r} is a directory, not a model file (.bin or .ftz)")
    if len(head) < 4 or struct.unpack("<i", head[:4])[0] != FASTTEXT_MAGIC:
        raise ResourceError(f"fastText model {path!r} is not a fastText model: it starts with {head[:4]!r}, "
                            "not fastText's magic number")


def read_fasttext_labels(fh, path: str, chunk: int = 1 << 20, size: int | None = None) -> list[str]:
    """The labels of the fastText model that `fh` reads from its start, reading no further than
    its dictionary (which comes before the matrices in .bin and .ftz alike); with `size` (the
    file's bytes), also that the file holds the matrices its headers announce (`_check_matrices`).

    Why: a build's driver checks a manifest's label against the model before any task, and
    DCLM's model is GBs of matrices behind a dictionary of some MB, perhaps on S3."""
    buf = bytearray(fh.read(64 + 28))
    check_fasttext_head(path, bytes(buf[:4]))
    if len(buf) < 92:
        raise ResourceError(f"fastText model {path!r} is truncated: it ends inside its header")
    n_entries, nwords, nlabels = struct.unpack("<iii", buf[64:76])
    if n_entries < 0 or nlabels < 0 or nwords < 0:
        raise ResourceError(f"fastText model {path!r} has a damaged dictionary header")
    while True:
        # The dictionary's size is known only once parsed: parse what is read, read more if short.
        _bytes, offsets, kinds, end = _parse_dictionary(np.frombuffer(bytes(buf), dtype=np.uint8), 92, n_entries)
        if end >= 0:
            break
        more = fh.read(max(chunk, len(buf)))
        if not more:
            raise ResourceError(f"fastText model {path!r} is truncated: it ends inside its dictionary")
        buf += more
    if size is not None:
        _check_matrices(fh, path, bytes(buf[:92]), end, size)
    return [bytes(_bytes[offsets[i]:offsets[i + 1]]).decode("utf-8", "replace")
            for i in range(n_entries) if kinds[i] == 1]


# A product quantizer's centroids: 256 per sub-quantizer, dim floats in all (fastText's ksub).
_PQ_CENTROIDS = 256


def _check_matrices(fh, path: str, head: bytes, dictionary_end: int, size: int) -> None:
    """ResourceError unless the `size`-byte file holds both matrices that its headers announce.

    Why: fastText's binding does not check. A quantized .ftz cut short loaded, and scored every
    document with an empty or partly garbage output matrix (each label's probability 0, or off),
    so a filter removed a whole source for a bad copy; a .bin cut short failed only inside an
    executor. Walked from the small headers alone (seeks; a few range reads on S3), as fastText
    saves a model: its dictionary (entries, then a pruned dictionary's index of int32 pairs),
    then per matrix a `quantized` bool and either int64 rows, int64 cols and float32 data, or
    (quantmatrix.cc) bool qnorm, int64 m, int64 n, int32 codesize, the codes, a product
    quantizer (int32 dim, nsubq, dsub, lastdsub, then dim x 256 float32 centroids) and, with
    qnorm, m norm codes and the norms' quantizer."""
    prune_size = struct.unpack("<q", head[84:92])[0]
    pos = dictionary_end + max(prune_size, 0) * 8

    def take(n: int, what: str) -> bytes:
        fh.seek(pos)
        data = fh.read(n)
        if len(data) < n:
            raise ResourceError(f"fastText model {path!r} is truncated: it ends inside its {what} matrix "
                                f"({size:,} bytes)")
        return data

    def skip_quantizer(what: str) -> int:
        pq_dim = struct.unpack("<i", take(16, what)[:4])[0]
        if pq_dim < 0:
            raise ResourceError(f"fastText model {path!r} has a damaged {what} matrix header")
        return 16 + pq_dim * _PQ_CENTROIDS * 4

    for what in ("input", "output"):
        quantized = take(1, what)[0]
        pos += 1
        if not quantized:
            rows, cols = struct.unpack("<qq", take(16, what))
            if rows < 0 or cols < 0:
                raise ResourceError(f"fastText model {path!r} has a damaged {what} matrix header")
            pos += 16 + rows * cols * 4
        else:
            qnorm, m, _n, codesize = struct.unpack("<?qqi", take(21, what))
            if m < 0 or codesize < 0:
                raise ResourceError(f"fastText model {path!r} has a damaged {what} matrix header")
            pos += 21 + codesize
            pos += skip_quantizer(what)
            if qnorm:
                pos += m
                pos += skip_quantizer(what)
        if pos > size:
            raise ResourceError(f"fastText model {path!r} is truncated: it ends inside its {what} matrix "
                                f"({size:,} bytes where its headers announce {pos:,} or more)")


def load_fasttext_numba(path: str, projected: bool | None = None) -> FastTextNumba | None:
    """Read a fastText .bin for `FastTextNumba`, or None when the model needs the fastText binding."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8 + 56)
        if len(head) < 64:
            return None
        magic, version = struct.unpack("<ii", head[:8])
        if magic != FASTTEXT_MAGIC or version > FASTTEXT_VERSION:
            return None
        (dim, _ws, _epoch, _min_count, _neg, word_ngrams, loss, model, bucket, minn, maxn,
         _lr_update, _t) = struct.unpack("<12id", head[8:64])
        if model != 3 or loss not in (LOSS_NS, LOSS_SOFTMAX, LOSS_OVA) or maxn > 0:
            return None  # model 3 = supervised
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    data = memoryview(mm)
    pos = 64
    n_entries, nwords, nlabels = struct.unpack("<iii", data[pos:pos + 12])
    _ntokens, prune_size = struct.unpack("<qq", data[pos + 12:pos + 28])
    pos += 28
    if prune_size >= 0:  # fastText's isPruned(): -1 is unpruned, and the binding refuses 0 unless quantized
        return None
    vocab_bytes, vocab_offsets, kinds, pos = _parse_dictionary(mm, pos, n_entries)
    if pos < 0:
        raise ResourceError(f"{path}: truncated fastText dictionary")
    words_then_labels = not np.any(np.diff(kinds.astype(np.int64)) < 0)
    if not words_then_labels or int(np.sum(kinds == 1)) != nlabels or n_entries != nwords + nlabels:
        return None  # fastText saves words, then labels; any other layout is left to the binding
    labels = [bytes(vocab_bytes[vocab_offsets[i]:vocab_offsets[i + 1]]).decode("utf-8", "replace")
              for i in range(nwords, n_entries)]
    input_matrix, pos = _dense_matrix(mm, pos, size, path, "input", nwords + bucket, dim)
    if input_matrix is None:
        return None
    output_matrix, pos = _dense_matrix(mm, pos, size, path, "output", nlabels, dim)
    if output_matrix is None:
        return None
    return FastTextNumba(labels=labels, nwords=nwords, word_ngrams=word_ngrams, bucket=bucket, loss=loss,
                         vocab_bytes=vocab_bytes, vocab_offsets=vocab_offsets, input_matrix=input_matrix,
                         output_matrix=output_matrix, projected=projected)
