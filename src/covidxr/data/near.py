"""Exact near-duplicate search over 256-bit perceptual hashes: every pair of codes within a
Hamming distance, found without comparing all pairs (multi-index hashing), then verified.
Must not read files: packed codes in, pairs out.

**Why it is exact (the pigeonhole principle).** The 256 bits are cut into ``m`` disjoint
substrings. If two codes differ in at most ``r`` bits and every substring allowed ``t``
differing bits, then ``m × (t + 1) > r`` guarantees that at least one substring differs in at
most ``t`` bits (otherwise the total would be at least ``m × (t + 1)``). So every pair within
``r`` shares, in some substring, a key at distance ``≤ t`` (``t`` is 0 or 1 here):

* ``t = 0``: the two substrings are equal — found by sorting the keys;
* ``t = 1``: they are equal, or equal once one bit ``f`` is masked out — found by sorting the
  masked keys, once per bit ``f`` of the substring.

Each candidate pair is then verified on all 256 bits (XOR and popcount), so the result is the
same set of pairs as comparing all pairs, whatever the data. The bits go to substrings
*balanced by entropy* (the bits of a radiograph's hash are far from fair coins), which changes
only the speed: the Hamming distance does not depend on the order of the bits.

The cost is about ``n × m × (b + 1)`` sorted keys plus the candidates, so it grows about
linearly with ``n`` while candidates stay rare. For large distances (``r ≥``
:data:`FLAT_FROM`, when substrings would be too short to be selective) and small sets (``n ≤``
:data:`FLAT_UNTIL`) every pair is compared instead, with faiss's binary flat index (SIMD
popcount, range search), which is exact too.
"""

from __future__ import annotations

import importlib.util

import numpy as np

__all__ = ["FLAT_FROM", "FLAT_UNTIL", "hamming_pairs", "mih_plan"]

#: From this distance on, every pair is compared (faiss flat range search).
FLAT_FROM = 40
#: Sets of at most this many codes are compared all pairs at once (it takes milliseconds).
FLAT_UNTIL = 2048
_MAX_KEY_BITS = 62
_CHUNK = 1 << 22   # candidate pairs expanded and verified at a time
_DENSE_BITS = 22   # keys this short are looked up in a table of 2**bits entries


def mih_plan(max_distance: int, *, n_bits=256) -> tuple[int, int]:
    """``(m, t)``: substrings and bits each may differ in, with ``m × (t + 1) > max_distance``
    and every substring short enough for a 62-bit key."""
    r = int(max_distance)
    t = 0 if r < 6 else 1
    m = max(r // (t + 1) + 1, -(-n_bits // _MAX_KEY_BITS))
    return m, t


def _substrings(bits: np.ndarray, m: int) -> list[np.ndarray]:
    """The bit columns of ``m`` disjoint substrings covering all columns of ``bits`` (n, d),
    dealt by entropy (highest first, snake order) so that each substring is about as selective."""
    p = bits.mean(axis=0) if len(bits) else np.full(bits.shape[1], 0.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nan_to_num(p * np.log2(p)) - np.nan_to_num((1 - p) * np.log2(1 - p))
    order = np.argsort(-h, kind="stable")
    deal = np.concatenate([np.arange(m), np.arange(m)[::-1]])
    owner = np.resize(deal, len(order))
    return [np.sort(order[owner == k]) for k in range(m)]


def _keys(bits: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Integer keys (n,) of the substring ``columns`` of ``bits`` (n, d)."""
    weights = np.left_shift(np.int64(1), np.arange(len(columns), dtype=np.int64))
    return bits[:, columns].astype(np.int64) @ weights


def _range_pairs(order: np.ndarray, first: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Pairs ``(order[first[e]], order[q])`` for every entry e and ``lo[e] ≤ q < hi[e]``, in chunks
    of about :data:`_CHUNK` pairs."""
    counts = np.maximum(hi - lo, 0)
    live = np.flatnonzero(counts)
    if not len(live):
        return
    ends = np.cumsum(counts[live])
    cuts = np.searchsorted(ends, np.arange(_CHUNK, ends[-1], _CHUNK), side="right")
    for part in np.split(live, cuts):
        if not len(part):
            continue
        c = counts[part]
        offset = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)
        yield order[np.repeat(first[part], c)], order[np.repeat(lo[part], c) + offset]


def _find(unique: np.ndarray, wanted: np.ndarray, n_bits: int) -> np.ndarray:
    """Positions of ``wanted`` keys in the sorted ``unique`` keys, -1 where absent (a dense table
    for short keys, else a binary search)."""
    if n_bits <= _DENSE_BITS:
        table = np.full(1 << n_bits, -1, dtype=np.int64)
        table[unique] = np.arange(len(unique))
        return table[wanted]
    j = np.minimum(np.searchsorted(unique, wanted), len(unique) - 1)
    return np.where(unique[j] == wanted, j, -1)


def _candidates(keys: np.ndarray, n_bits: int, t: int):
    """Candidate pairs (i, j) whose keys (n,) differ in at most ``t`` (0 or 1) of ``n_bits`` bits,
    each pair yielded once (in either order)."""
    order = np.argsort(keys, kind="stable")
    unique, starts, counts = np.unique(keys[order], return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(unique)), counts)
    positions = np.arange(len(keys))
    yield from _range_pairs(order, positions, positions + 1, (starts + counts)[group])   # equal keys
    if t == 0:
        return
    # keys one bit apart: each unique key u with bit f clear meets u | 1 << f, when present
    flips = np.left_shift(np.int64(1), np.arange(n_bits, dtype=np.int64))
    u, f = np.nonzero((unique[:, None] & flips[None, :]) == 0)
    v = _find(unique, unique[u] | flips[f], n_bits)
    u, v = u[v >= 0], v[v >= 0]
    members = np.repeat(u, counts[u])                                   # one entry per member of u
    first = starts[members] + np.arange(len(members)) - np.repeat(np.cumsum(counts[u]) - counts[u], counts[u])
    w = np.repeat(v, counts[u])
    yield from _range_pairs(order, first, starts[w], starts[w] + counts[w])


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def _popcount_distance(words: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances (k,) between rows ``a`` and ``b`` (k,) of ``words`` (n, d / 64) uint64."""
    xor = words[a] ^ words[b]
    if hasattr(np, "bitwise_count"):   # NumPy 2
        return np.bitwise_count(xor).sum(axis=1, dtype=np.int64)
    return _POP8[xor.view(np.uint8)].sum(axis=1)


def _flat_pairs(packed: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexBinaryFlat(packed.shape[1] * 8)
    index.add(packed)
    a_all, b_all, d_all = [], [], []
    for start in range(0, len(packed), 4096):   # results of 4096 queries at a time
        lims, dist, found = index.range_search(packed[start:start + 4096], int(max_distance) + 1)  # radius is strict
        a = start + np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64))
        keep = a < found
        a_all.append(a[keep]), b_all.append(found[keep].astype(np.int64)), d_all.append(dist[keep].astype(np.int64))
    return np.concatenate(a_all), np.concatenate(b_all), np.concatenate(d_all)


def _mih_pairs(packed: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bits = np.unpackbits(packed, axis=1)
    words = np.ascontiguousarray(packed).view(np.uint64)
    m, t = mih_plan(max_distance, n_bits=bits.shape[1])
    n, found = len(packed), []
    for columns in _substrings(bits, m):
        for a, b in _candidates(_keys(bits, columns), len(columns), t):
            d = _popcount_distance(words, a, b)
            ok = d <= max_distance
            lo, hi = np.minimum(a[ok], b[ok]), np.maximum(a[ok], b[ok])
            found.append(lo * n + hi)
    pairs = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    a, b = pairs // n, pairs % n
    return a, b, _popcount_distance(words, a, b)


def hamming_pairs(packed: np.ndarray, *, max_distance: int, method="auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of rows of ``packed`` within ``max_distance`` bits, exactly.

    Args:
        packed: ``uint8`` codes of shape (n, d / 8), d a multiple of 64 (256 for the near hash).
        max_distance: Largest Hamming distance of a pair (≥ 0).
        method: ``"mih"`` (multi-index hashing, verified), ``"flat"`` (all pairs, faiss) or
            ``"auto"`` (flat for small sets and large distances, else mih). All give the same pairs.

    Returns:
        ``(a, b, distance)``: int64 arrays (k,) with ``a < b``, sorted by ``(a, b)``.

    Raises:
        ValueError: A negative ``max_distance``, an unknown ``method`` or codes of another shape.
    """
    if method not in ("auto", "mih", "flat"):
        raise ValueError(f"Unknown method. Expected one of ['auto', 'mih', 'flat']. Received: method={method!r}")
    if int(max_distance) < 0:
        raise ValueError(f"Expected max_distance >= 0. Received: max_distance={max_distance!r}")
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if packed.ndim != 2 or packed.shape[1] % 8:
        raise ValueError(f"Expected uint8 codes of shape (n, k*8). Received: shape={packed.shape}")
    if len(packed) < 2:
        return (np.zeros(0, dtype=np.int64),) * 3
    if method == "auto":
        method = "flat" if max_distance >= FLAT_FROM or len(packed) <= FLAT_UNTIL else "mih"
        if method == "flat" and importlib.util.find_spec("faiss") is None:   # exact too, only slower there
            method = "mih"
    a, b, d = (_flat_pairs if method == "flat" else _mih_pairs)(packed, int(max_distance))
    order = np.lexsort((b, a))
    return a[order], b[order], d[order]
