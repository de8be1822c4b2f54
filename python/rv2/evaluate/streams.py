"""Seeded random streams for resampling, shared by the native kernels and numpy.

Word k of a stream is mix64(key + (k + 1) * golden), SplitMix64's output function,
with key = mix64(seed ^ tag) and one tag per use (bootstrap draws, permutation
swaps). Being counter-based, any resample can be drawn on its own, on any thread,
in any order: the native kernels draw the resamples they walk, block by block, in
cache, and these numpy functions give the very same draws, for the twins, for tests
against scikit-learn, and for callers that want the indices themselves.

- Bootstrap: resample r draws U units; draw i is floor(word(r U + i) U / 2^64),
  off uniform by at most U / 2^64.
- Permutation: permutations 16k .. 16k + 15 take their swaps from words
  k ceil(n / 4) + q, q < ceil(n / 4): bits 16 t .. 16 t + 15 of word q swap case
  4 q + t in those 16 permutations (bit b: permutation 16k + b).

csrc/stats/ranking.cpp holds the C++ side (stream_word, draw_below).
"""
from __future__ import annotations

import numpy as np

from rv2.errors import UserError

GOLDEN = 0x9E3779B97F4A7C15
BOOT_TAG = 0x626F6F7473747270  # "bootstrp"
PERM_TAG = 0x7065726D73776170  # "permswap"
BLOCK = 16  # permutations per swap word block (and resamples per native block)
# named in reports, so a result says which draws its seed stands for
STREAM = "rv2 counter stream v1 (SplitMix64 output function over a counter)"

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def check_seed(seed) -> int:
    """The seed as an int in [0, 2^64), or a UserError naming it."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise UserError(f"seed must be an integer, got {seed!r}")
    if not 0 <= int(seed) < 1 << 64:
        raise UserError(f"seed must lie in [0, 2^64), got {seed}")
    return int(seed)


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on a uint64 array (wrapping arithmetic)."""
    z = z ^ (z >> np.uint64(30))
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def stream_key(seed: int, tag: int) -> np.uint64:
    return mix64(np.array([check_seed(seed) ^ tag], np.uint64))[0]


def words(key: np.uint64, counters: np.ndarray) -> np.ndarray:
    """Words at the given counters (uint64 array) of the stream with this key."""
    return mix64(key + (counters + np.uint64(1)) * np.uint64(GOLDEN))


def draw_below(x: np.ndarray, n: int) -> np.ndarray:
    """floor(x n / 2^64) for uint64 x and 1 <= n < 2^32, as int64 (the high word of
    the 128-bit product, from 32-bit halves: every partial product fits 64 bits)."""
    m = np.uint64(n)
    lo, hi = x & np.uint64(0xFFFFFFFF), x >> np.uint64(32)
    return ((hi * m + ((lo * m) >> np.uint64(32))) >> np.uint64(32)).astype(np.int64)


def boot_draws(seed: int, first: int, count: int, units: int) -> np.ndarray:
    """(count, units) int64: the units drawn by resamples first .. first + count - 1."""
    if not 1 <= units < 1 << 31:
        raise UserError(f"bootstrap needs 1 to 2^31 - 1 units, got {units}")
    key = stream_key(seed, BOOT_TAG)
    r = np.arange(first, first + count, dtype=np.uint64)[:, None]
    ctr = r * np.uint64(units) + np.arange(units, dtype=np.uint64)[None, :]
    return draw_below(words(key, ctr), units)


def counts_of(draws: np.ndarray, units: int) -> np.ndarray:
    """(rows, units) int32: how often each unit appears in each row of draws."""
    rows = draws.shape[0]
    flat = (draws + (np.arange(rows, dtype=np.int64) * units)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * units).astype(np.int32).reshape(rows, units)


def boot_counts(seed: int, first: int, count: int, units: int) -> np.ndarray:
    """(count, units) int32: how often each unit was drawn in each resample."""
    return counts_of(boot_draws(seed, first, count, units), units)


def perm_swaps(seed: int, first: int, count: int, n: int) -> np.ndarray:
    """(count, n) uint8 swap indicators of permutations first .. first + count - 1
    (first a multiple of BLOCK)."""
    if first % BLOCK:
        raise ValueError(f"first permutation must be a multiple of {BLOCK}, got {first}")
    key = stream_key(seed, PERM_TAG)
    Q = (n + 3) // 4
    out = np.empty((count, n), np.uint8)
    case = np.arange(n)
    shift = (16 * (case % 4)).astype(np.uint64)
    for b0 in range(0, count, BLOCK):
        k = (first + b0) // BLOCK
        w = words(key, np.uint64(k * Q) + np.arange(Q, dtype=np.uint64))
        bits = (w[case // 4] >> shift) & np.uint64(0xFFFF)
        lanes = min(BLOCK, count - b0)
        lane = np.arange(lanes, dtype=np.uint64)[:, None]
        out[b0:b0 + lanes] = ((bits[None, :] >> lane) & np.uint64(1)).astype(np.uint8)
    return out
