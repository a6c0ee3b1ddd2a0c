"""MinHash signatures and LSH banding for near-duplicate detection.

Why a module of its own: the Spark stage in `filters.dedup` only moves keys around; the
maths that decides which documents *can* collide lives here, is plain numpy, and is tested
on its own against `datasketch`.

Signatures are bit-for-bit those of ``datasketch.MinHash(num_perm, seed)`` (datasketch
2.x default scheme "affine32" with its default ``sha1_hash32``) fed with the same
shingles, so a signature computed here can be compared with, or inserted into, datasketch
structures. The difference is speed and memory: datasketch makes a Python bytes object
and a hashlib call per shingle, then builds the whole ``shingles x num_perm`` matrix;
we hash every shingle in place inside one UTF-8 buffer with a numba-compiled SHA-1
(same digest), drop repeated hashes, and apply the permutations in bounded chunks with a
running minimum, so huge or pathologically repetitive documents stay cheap. The hashlib
path (`MinHasher.signature`, `text_signature_reference`) is kept as the test oracle.

Shingles: the text is NFKC-normalised and lower-cased, words are maximal runs of Unicode
word characters (``\\w+``, so punctuation and whitespace differences do not matter), and a
shingle is ``ngram`` consecutive words joined by one space, UTF-8 encoded. A document
with fewer than ``ngram`` words (but at least one) has one shingle: all its words. A
document with no words has no shingles and no signature; the dedup stage keeps it
(exact dedup is the tool for empty documents).
"""

from __future__ import annotations

import hashlib
import re
import struct
import unicodedata
from dataclasses import dataclass

import numpy as np

from dolmino.manifest import MINHASH_DEFAULTS, MINHASH_MAX_PERM

WORD_RE = re.compile(r"\w+")
MAX_HASH32 = np.uint32(0xFFFFFFFF)
# Shingles per numpy permutation step (bounds memory at CHUNK x num_perm x 4 bytes); also
# the length above which the compiled path drops repeated shingle hashes first.
CHUNK = 8192

# MurmurHash3 32-bit finalizer, as datasketch's "affine32" scheme pre-mixes inputs.
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))


@dataclass(frozen=True)
class MinHashConfig:
    """Parameters of the near-duplicate stage (the manifest's `dedup.minhash` object).

    `bands` x `rows` <= `num_perm`; when either is None both are derived from
    `threshold` the way datasketch's MinHashLSH does (minimise the equally weighted
    false-positive and false-negative areas of the S-curve).
    """

    num_perm: int = MINHASH_DEFAULTS["num_perm"]
    ngram: int = MINHASH_DEFAULTS["ngram"]
    threshold: float = MINHASH_DEFAULTS["threshold"]
    seed: int = 1
    bands: int | None = None
    rows: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_perm", "ngram"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"minhash {name} must be a positive integer, got {value!r}")
        if self.num_perm > MINHASH_MAX_PERM:
            raise ValueError(f"minhash num_perm must be at most {MINHASH_MAX_PERM:,}, got {self.num_perm:,}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise ValueError(f"minhash seed must be an integer from 0 to 2**32 - 1, got {self.seed!r}")
        if not (isinstance(self.threshold, (int, float)) and 0.0 < float(self.threshold) <= 1.0):
            raise ValueError(f"minhash threshold must be in (0, 1], got {self.threshold!r}")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("minhash bands and rows must be given together (or neither)")
        if self.bands is not None:
            if self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm:
                raise ValueError(f"minhash bands x rows = {self.bands} x {self.rows} must be "
                                 f"between 1 and num_perm={self.num_perm}")

    def banding(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        return optimal_banding(float(self.threshold), self.num_perm)


def words_of(text: str) -> list[str]:
    """The words shingles are made of (see the module docstring for the normalisation)."""
    return WORD_RE.findall(unicodedata.normalize("NFKC", text).lower())


def shingles_of(words: list[str], ngram: int) -> list[bytes]:
    """The distinct shingles of a word list, UTF-8 encoded (the reference definition).

    Texts shorter than `ngram` words give one shingle of all their words; no words, none.
    """
    if not words:
        return []
    if len(words) < ngram:
        return [" ".join(words).encode("utf-8")]
    return [s.encode("utf-8") for s in {" ".join(words[i:i + ngram]) for i in range(len(words) - ngram + 1)}]


def sha1_hash32_array(items: list[bytes]) -> np.ndarray:
    """datasketch's sha1_hash32 (first 4 bytes of SHA-1, little-endian) for many inputs."""
    sha1 = hashlib.sha1
    # Whole 20-byte digests joined, then every 5th uint32: cheaper than slicing each digest.
    digests = np.frombuffer(b"".join([sha1(b).digest() for b in items]), dtype="<u4")
    return digests[::5].astype(np.uint32)


_M32 = 0xFFFFFFFF


def _sha1_first32_py(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """sha1_hash32 of data[starts[k]:ends[k]] for every k (hashlib; the reference path)."""
    view = memoryview(data.tobytes())
    return sha1_hash32_array([view[s:e] for s, e in zip(starts.tolist(), ends.tolist())])


def _sha1_first32_kernel(data, starts, ends):
    """SHA-1 (FIPS 180-4) of many byte ranges of one buffer; first 4 digest bytes as '<u4'.

    Compiled with numba: hashing shingles in place, without a Python bytes object and a
    hashlib call per shingle, is what makes signatures faster than datasketch's. Checked
    against hashlib in the tests, on lengths that cross SHA-1's 55/64-byte block limits.
    """
    n = starts.shape[0]
    out = np.empty(n, dtype=np.uint32)
    w = np.empty(80, dtype=np.uint32)
    block = np.empty(4, dtype=np.uint8)
    for k in range(n):
        start = starts[k]
        length = ends[k] - start
        h0, h1, h2, h3, h4 = (np.uint32(0x67452301), np.uint32(0xEFCDAB89), np.uint32(0x98BADCFE),
                              np.uint32(0x10325476), np.uint32(0xC3D2E1F0))
        total = ((length + 8) // 64 + 1) * 64  # message + 0x80 + zero pad + 8-byte length
        bit_length = np.uint64(length) * np.uint64(8)
        for offset in range(0, total, 64):
            for i in range(16):
                p = offset + 4 * i
                if p + 4 <= length:  # a whole big-endian word of message bytes
                    q = start + p
                    w[i] = ((np.uint32(data[q]) << np.uint32(24)) | (np.uint32(data[q + 1]) << np.uint32(16))
                            | (np.uint32(data[q + 2]) << np.uint32(8)) | np.uint32(data[q + 3]))
                    continue
                for j in range(4):  # the tail: message bytes, 0x80, zeros, bit length
                    pj = p + j
                    if pj < length:
                        block[j] = data[start + pj]
                    elif pj == length:
                        block[j] = 0x80
                    elif pj >= total - 8:
                        block[j] = np.uint8((bit_length >> np.uint64(8 * (total - 1 - pj))) & np.uint64(0xFF))
                    else:
                        block[j] = 0
                w[i] = ((np.uint32(block[0]) << np.uint32(24)) | (np.uint32(block[1]) << np.uint32(16))
                        | (np.uint32(block[2]) << np.uint32(8)) | np.uint32(block[3]))
            for i in range(16, 80):
                x = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]
                w[i] = np.uint32(((x << 1) | (x >> 31)) & _M32)
            a, b, c, d, e = h0, h1, h2, h3, h4
            for i in range(80):
                if i < 20:
                    f = np.uint32((b & c) | ((~b) & d))
                    kk = np.uint32(0x5A827999)
                elif i < 40:
                    f = b ^ c ^ d
                    kk = np.uint32(0x6ED9EBA1)
                elif i < 60:
                    f = (b & c) | (b & d) | (c & d)
                    kk = np.uint32(0x8F1BBCDC)
                else:
                    f = b ^ c ^ d
                    kk = np.uint32(0xCA62C1D6)
                t = np.uint32((((a << 5) | (a >> 27)) + f + e + kk + w[i]) & _M32)
                e = d
                d = c
                c = np.uint32(((b << 30) | (b >> 2)) & _M32)
                b = a
                a = t
            h0 = np.uint32((h0 + a) & _M32)
            h1 = np.uint32((h1 + b) & _M32)
            h2 = np.uint32((h2 + c) & _M32)
            h3 = np.uint32((h3 + d) & _M32)
            h4 = np.uint32((h4 + e) & _M32)
        # digest[:4] is h0 big-endian; datasketch reads it little-endian: byte-swap.
        out[k] = np.uint32((((h0 & 0xFF) << 24) | ((h0 & 0xFF00) << 8) | ((h0 >> 8) & 0xFF00) | (h0 >> 24)) & _M32)
    return out


def _permute_min_kernel(hashes, a, b, signature):
    """signature[j] = min(signature[j], min_i(a[j] * fmix32(hashes[i]) + b[j] mod 2^32)).

    The same arithmetic as `MinHasher.update` without its hashes x num_perm temporaries;
    the inner loop over permutations vectorises.
    """
    num_perm = a.shape[0]
    for i in range(hashes.shape[0]):
        h = np.uint32(hashes[i])
        h = np.uint32(h ^ (h >> 16))
        h = np.uint32((h * np.uint32(0x85EBCA6B)) & _M32)
        h = np.uint32(h ^ (h >> 13))
        h = np.uint32((h * np.uint32(0xC2B2AE35)) & _M32)
        h = np.uint32(h ^ (h >> 16))
        for j in range(num_perm):
            v = np.uint32((a[j] * h + b[j]) & _M32)
            if v < signature[j]:
                signature[j] = v
    return signature


try:
    import numba

    _sha1_first32 = numba.njit(cache=True, nogil=True)(_sha1_first32_kernel)
    _permute_min = numba.njit(cache=True, nogil=True)(_permute_min_kernel)
except ImportError:  # numba is a declared dependency; without it the numpy/hashlib paths are used
    _sha1_first32 = _sha1_first32_py
    _permute_min = None


def shingle_spans(text: str, ngram: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The UTF-8 buffer of the document's words joined by single spaces, and byte ranges.

    Shingle k is ``buffer[starts[k]:ends[k]]``, byte-identical to `shingles_of`'s
    ``" ".join(words[k:k + ngram])``. Words never contain the byte 0x20 (``\\w`` excludes
    the space, and UTF-8 continuation bytes are >= 0x80), so the spaces in the buffer are
    exactly the word boundaries. None when the text has no words.
    """
    words = words_of(text)
    if not words:
        return None
    data = np.frombuffer(" ".join(words).encode("utf-8"), dtype=np.uint8)
    spaces = np.flatnonzero(data == 32)
    word_starts = np.concatenate(([0], spaces + 1))
    word_ends = np.concatenate((spaces, [data.size]))
    if len(words) < ngram:
        return data, word_starts[:1], word_ends[-1:]
    return data, word_starts[: len(words) - ngram + 1], word_ends[ngram - 1:]


def _fmix32(hv: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = _FMIX32
    hv = hv ^ (hv >> s1)
    hv = hv * m1
    hv = hv ^ (hv >> s2)
    hv = hv * m2
    return hv ^ (hv >> s3)


class MinHasher:
    """Computes datasketch-identical MinHash signatures (uint32[num_perm]) from shingles.

    `text_signature` is the fast path used by the dedup stage; `signature` and
    `text_signature_reference` go through Python bytes and hashlib like datasketch and
    serve as the oracle. Picklable and small (two uint32[num_perm] arrays), so Spark can
    ship it in a closure.
    """

    def __init__(self, num_perm: int = 128, seed: int = 1):
        self.num_perm = int(num_perm)
        self.seed = int(seed)
        # Same draws, in the same order, as datasketch.MinHash._init_permutations (affine32).
        gen = np.random.RandomState(self.seed)
        self.a = gen.randint(0, 1 << 31, self.num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        self.b = gen.randint(0, 1 << 32, self.num_perm, dtype=np.uint32)

    def empty(self) -> np.ndarray:
        """The signature of the empty set (what datasketch holds before any update)."""
        return np.full(self.num_perm, MAX_HASH32, dtype=np.uint32)

    def update(self, signature: np.ndarray, hashes: np.ndarray) -> np.ndarray:
        """Fold 32-bit shingle hashes into `signature` (in place) and return it."""
        if hashes.size == 0:
            return signature
        with np.errstate(over="ignore"):
            mixed = _fmix32(hashes.astype(np.uint32, copy=False))
            for lo in range(0, mixed.size, CHUNK):
                block = mixed[lo:lo + CHUNK, None] * self.a + self.b  # wraps mod 2^32, as intended
                np.minimum(signature, block.min(axis=0), out=signature)
        return signature

    def signature(self, shingles: list[bytes]) -> np.ndarray:
        """Signature of a set of byte strings; equals datasketch's after update_batch(shingles)."""
        sig = self.empty()
        for lo in range(0, len(shingles), CHUNK):
            self.update(sig, sha1_hash32_array(shingles[lo:lo + CHUNK]))
        return sig

    def text_signature(self, text: str, ngram: int) -> np.ndarray | None:
        """Signature of a document's word shingles, or None if it has no words.

        Equals ``signature(shingles_of(words_of(text), ngram))`` (and datasketch's), but
        hashes the shingles in place with the compiled SHA-1 and permutes them with a
        compiled loop; long texts drop repeated hashes first (pathological repetition
        then costs one sort).
        """
        spans = shingle_spans(text, ngram)
        if spans is None:
            return None
        hashes = _sha1_first32(*spans)
        if hashes.size > CHUNK:
            hashes = np.unique(hashes)  # long texts repeat shingles more; sorting pays off there
        if _permute_min is None:
            return self.update(self.empty(), hashes)
        return _permute_min(hashes, self.a, self.b, self.empty())

    def text_signature_reference(self, text: str, ngram: int) -> np.ndarray | None:
        """The same signature through Python strings and hashlib (slow; the test oracle)."""
        words = words_of(text)
        return self.signature(shingles_of(words, ngram)) if words else None


def band_hashes(signature: np.ndarray, bands: int, rows: int) -> list[int]:
    """One 64-bit hash per band of `rows` consecutive slots (documents collide per band).

    blake2b rather than Python's hash(): stable across processes, machines and versions.
    """
    raw = signature.astype("<u4", copy=False).tobytes()
    width = 4 * rows
    out = []
    for band in range(bands):
        digest = hashlib.blake2b(raw[band * width:(band + 1) * width], digest_size=8,
                                 person=struct.pack("<Q", band)).digest()
        out.append(int.from_bytes(digest, "little"))
    return out


def _collision_probability(s: np.ndarray, bands: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """P(two sets with Jaccard s share at least one band) = 1 - (1 - s^r)^b."""
    return 1.0 - (1.0 - s[None, :] ** rows[:, None]) ** bands[:, None]


def _integrate(f_values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Composite Simpson over an even number of intervals, vectorised over rows."""
    n = f_values.shape[1] - 1
    weights = np.ones(n + 1)
    weights[1:-1:2] = 4.0
    weights[2:-1:2] = 2.0
    return f_values @ weights * (hi - lo) / (3.0 * n)


def optimal_banding(threshold: float, num_perm: int, false_positive_weight: float = 0.5,
                    false_negative_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false-positive/negative areas, as datasketch does.

    False positives: area under the S-curve below `threshold`; false negatives: area above
    it that the curve misses. Same search space and objective as datasketch's
    MinHashLSH (which integrates with scipy.quad); we integrate with Simpson's rule on
    a fine grid, which picks the same (bands, rows) (checked in the tests).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands = np.array([p[0] for p in pairs], dtype=np.float64)
    rows = np.array([p[1] for p in pairs], dtype=np.float64)
    grid = 2000
    below = np.linspace(0.0, threshold, grid + 1)
    above = np.linspace(threshold, 1.0, grid + 1)
    fp = _integrate(_collision_probability(below, bands, rows), 0.0, threshold)
    fn = _integrate(1.0 - _collision_probability(above, bands, rows), threshold, 1.0)
    error = fp * false_positive_weight + fn * false_negative_weight
    best = int(np.argmin(error))  # first minimum, same tie rule as datasketch's strict '<'
    return pairs[best]


def collision_probability(similarity: float, bands: int, rows: int) -> float:
    """Chance that a pair with this Jaccard similarity becomes an LSH candidate."""
    return 1.0 - (1.0 - similarity ** rows) ** bands
