"""Text-to-pattern Hamming distances: for a text T (length n) and a pattern P (length m <= n), the number of
mismatches D[i] = #{j : T[i + j] != P[j]} at every shift i = 0, ..., n - m.

Exact algorithms: the naive O(nm) scan, one FFT cross-correlation per character, Abrahamson's
frequent / infrequent split (O(n sqrt(m log m))), and a simplified Las Vegas variant of Chan, Jin,
Vassilevska Williams and Xu (2023) that hashes the alphabet into buckets and subtracts the collisions.
Approximate: the classical alphabet-hashing estimator with (1 - eps) HD <= estimate <= HD.
Also the sumset primitive X + Y by one FFT.

Texts and patterns are strings or 1-D integer arrays (any integers are symbols).
"""

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lib.validation import check_generator, check_positive_int

_CHUNK_ELEMENTS = 1 << 21  # elements of a temporary array processed at once (bounds memory)


def _as_symbols(sequence: object, name: str) -> np.ndarray:
    """A string or a 1-D integer sequence as a non-empty int64 array of symbols."""
    if isinstance(sequence, str):
        symbols = np.frombuffer(sequence.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    else:
        symbols = np.asarray(sequence)
        if symbols.dtype == bool or not np.issubdtype(symbols.dtype, np.integer):
            raise TypeError(f"{name} must be a str or a sequence of integers, got dtype {symbols.dtype}")
        if symbols.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {symbols.shape}")
        symbols = symbols.astype(np.int64)
    if symbols.size == 0:
        raise ValueError(f"{name} must not be empty")
    return symbols


def _encode(text: object, pattern: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a text and a pattern and code their joint alphabet as 0, ..., sigma - 1.

    Returns (text codes, pattern codes, sorted alphabet of original symbols).
    """
    text_symbols = _as_symbols(text, "text")
    pattern_symbols = _as_symbols(pattern, "pattern")
    if pattern_symbols.size > text_symbols.size:
        raise ValueError(
            f"pattern must not be longer than text, got len(pattern) = {pattern_symbols.size} > "
            f"len(text) = {text_symbols.size}"
        )
    alphabet, codes = np.unique(np.concatenate([text_symbols, pattern_symbols]), return_inverse=True)
    return codes[: text_symbols.size], codes[text_symbols.size :], alphabet


def hamming_naive(text: object, pattern: object) -> np.ndarray:
    """D[i] = #{j : text[i + j] != pattern[j]} for i = 0, ..., n - m, comparing every window: O(nm) work."""
    text_codes, pattern_codes, _ = _encode(text, pattern)
    windows = sliding_window_view(text_codes, pattern_codes.size)
    rows = max(1, _CHUNK_ELEMENTS // pattern_codes.size)
    blocks = [(windows[start : start + rows] != pattern_codes).sum(axis=1)
              for start in range(0, len(windows), rows)]
    return np.concatenate(blocks).astype(np.int64)


def _fft_match_counts(text_codes: np.ndarray, pattern_codes: np.ndarray, chars: np.ndarray) -> np.ndarray:
    """Matches at every shift contributed by the character codes ``chars``, one correlation per character.

    The text is cut into overlapping blocks of length 2m starting at multiples of m (Abrahamson's blocking),
    so one character costs O(n log m); the spectra are summed over characters before one inverse FFT.
    """
    n, m = text_codes.size, pattern_codes.size
    n_shifts = n - m + 1
    n_blocks = -(-n_shifts // m)
    padded = np.full((n_blocks + 1) * m, -1, dtype=np.int64)
    padded[:n] = text_codes
    blocks = sliding_window_view(padded, 2 * m)[::m][:n_blocks]  # (n_blocks, 2m)
    spectrum = np.zeros((n_blocks, m + 1), dtype=complex)
    per_chunk = max(1, _CHUNK_ELEMENTS // (n_blocks * 2 * m))
    for start in range(0, chars.size, per_chunk):
        chunk = chars[start : start + per_chunk]
        text_indicator = (blocks[None] == chunk[:, None, None]).astype(float)
        pattern_indicator = np.zeros((chunk.size, 2 * m))
        pattern_indicator[:, :m] = pattern_codes[None] == chunk[:, None]
        text_spectra = np.fft.rfft(text_indicator, axis=-1)
        pattern_spectra = np.conj(np.fft.rfft(pattern_indicator, axis=-1))
        spectrum += np.einsum("cbf,cf->bf", text_spectra, pattern_spectra)
    correlation = np.fft.irfft(spectrum, n=2 * m, axis=-1)[:, :m]  # lag i < m never wraps around
    return np.rint(correlation.ravel()[:n_shifts]).astype(np.int64)


def _codes_of(chars: object, alphabet: np.ndarray) -> np.ndarray:
    """The codes of the symbols ``chars`` that occur in ``alphabet`` (others can match nothing)."""
    symbols = np.unique(_as_symbols(chars, "chars"))
    present = np.isin(symbols, alphabet)
    return np.searchsorted(alphabet, symbols[present])


def match_counts_fft(text: object, pattern: object, chars: object = None) -> np.ndarray:
    """At every shift i, the matches text[i + j] == pattern[j] == c summed over the characters c in ``chars``.

    Computed with one FFT cross-correlation of the indicators 1[text == c] and 1[pattern == c] per character.
    ``chars`` (a string or integer sequence) defaults to every character of the pattern.
    """
    text_codes, pattern_codes, alphabet = _encode(text, pattern)
    codes = np.unique(pattern_codes) if chars is None else _codes_of(chars, alphabet)
    return _fft_match_counts(text_codes, pattern_codes, codes)


def hamming_fft(text: object, pattern: object) -> np.ndarray:
    """Hamming distances as m minus the matches of all characters, one FFT per distinct pattern character."""
    text_codes, pattern_codes, _ = _encode(text, pattern)
    return pattern_codes.size - _fft_match_counts(text_codes, pattern_codes, np.unique(pattern_codes))


def _shift_histogram(
    text_positions: np.ndarray,
    pattern_positions: np.ndarray,
    range_starts: np.ndarray,
    range_lengths: np.ndarray,
    n_shifts: int,
) -> np.ndarray:
    """Histogram of shifts j - a over the pairs (j, a): text position j = text_positions[k] is paired with
    a = pattern_positions[range_starts[k] + r] for r < range_lengths[k]. Shifts outside [0, n_shifts) are
    dropped.
    """
    histogram = np.zeros(n_shifts, dtype=np.int64)
    ends = np.cumsum(range_lengths)
    total_pairs = ends[-1] if ends.size else 0
    boundaries = np.searchsorted(ends, np.arange(_CHUNK_ELEMENTS, total_pairs, _CHUNK_ELEMENTS))
    for piece in np.split(np.arange(text_positions.size), boundaries):
        lengths = range_lengths[piece]
        total = int(lengths.sum())
        if total == 0:
            continue
        offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        partners = pattern_positions[np.repeat(range_starts[piece], lengths) + offsets]
        shifts = np.repeat(text_positions[piece], lengths) - partners
        shifts = shifts[(shifts >= 0) & (shifts < n_shifts)]
        histogram += np.bincount(shifts, minlength=n_shifts)
    return histogram


def _sparse_match_counts(text_codes: np.ndarray, pattern_codes: np.ndarray, chars: np.ndarray) -> np.ndarray:
    """Matches contributed by the character codes ``chars``, by listing every pair of equal characters."""
    n_shifts = text_codes.size - pattern_codes.size + 1
    selected = np.zeros(max(text_codes.max(), pattern_codes.max()) + 1, dtype=bool)
    selected[chars] = True
    pattern_positions = np.flatnonzero(selected[pattern_codes])
    pattern_positions = pattern_positions[np.argsort(pattern_codes[pattern_positions], kind="stable")]
    sorted_codes = pattern_codes[pattern_positions]
    text_positions = np.flatnonzero(selected[text_codes])
    starts = np.searchsorted(sorted_codes, text_codes[text_positions], side="left")
    ends = np.searchsorted(sorted_codes, text_codes[text_positions], side="right")
    return _shift_histogram(text_positions, pattern_positions, starts, ends - starts, n_shifts)


def match_counts_sparse(text: object, pattern: object, chars: object = None) -> np.ndarray:
    """The counts of :func:`match_counts_fft`, listing every pair (j, a) with text[j] == pattern[a] == c.

    Costs one step per pair: sum over c of (occurrences of c in text) x (occurrences of c in pattern).
    """
    text_codes, pattern_codes, alphabet = _encode(text, pattern)
    codes = np.unique(pattern_codes) if chars is None else _codes_of(chars, alphabet)
    return _sparse_match_counts(text_codes, pattern_codes, codes)


def abrahamson_threshold(m: int) -> int:
    """The balancing threshold t* = ceil(sqrt(m log2 m)) (at least 1) for a pattern of length m."""
    m = check_positive_int(m, "m")
    return max(1, int(np.ceil(np.sqrt(m * np.log2(m)))))


@dataclass(frozen=True)
class AbrahamsonCost:
    """Operation-count model of Abrahamson's algorithm, one entry per threshold t.

    fft : (number of frequent characters) x n x log2(2m), the blocked FFTs of the frequent characters.
    sparse : number of equal-character pairs (j, a) listed for the infrequent characters.
    """

    fft: np.ndarray
    sparse: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.fft + self.sparse


def _split_by_frequency(
    pattern_codes: np.ndarray, n_codes: int, threshold: int
) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the frequent (> ``threshold`` occurrences in the pattern) and infrequent pattern chars."""
    counts = np.bincount(pattern_codes, minlength=n_codes)
    in_pattern = np.flatnonzero(counts)
    frequent = counts[in_pattern] > threshold
    return in_pattern[frequent], in_pattern[~frequent]


def abrahamson_cost(text: object, pattern: object, thresholds: object) -> AbrahamsonCost:
    """The operation-count model of :func:`hamming_abrahamson` at each of ``thresholds`` (an int or a sequence
    of ints >= 1); the fields of the result have the shape of ``thresholds``."""
    text_codes, pattern_codes, alphabet = _encode(text, pattern)
    thresholds_array = np.asarray(thresholds)
    for threshold in thresholds_array.ravel().tolist() or [None]:
        check_positive_int(threshold, "thresholds")
    pattern_counts = np.bincount(pattern_codes, minlength=alphabet.size)
    text_counts = np.bincount(text_codes, minlength=alphabet.size)
    frequent = pattern_counts > thresholds_array[..., None]
    pairs = np.where(frequent, 0, text_counts * pattern_counts)
    m = pattern_codes.size
    return AbrahamsonCost(
        fft=frequent.sum(axis=-1) * text_codes.size * np.log2(2 * m),
        sparse=pairs.sum(axis=-1).astype(float),
    )


def hamming_abrahamson(text: object, pattern: object, threshold: int | None = None) -> np.ndarray:
    """Exact Hamming distances by Abrahamson's split (1987).

    Characters occurring more than ``threshold`` times in the pattern ("frequent", at most m / threshold of
    them) get one blocked FFT each, O(n log m); the matches of every other character are listed pair by pair,
    at most n x threshold pairs. The default threshold ceil(sqrt(m log2 m)) balances the two parts:
    O(n sqrt(m log m)) in total.
    """
    text_codes, pattern_codes, alphabet = _encode(text, pattern)
    m = pattern_codes.size
    threshold = abrahamson_threshold(m) if threshold is None else check_positive_int(threshold, "threshold")
    frequent, infrequent = _split_by_frequency(pattern_codes, alphabet.size, threshold)
    matches = _sparse_match_counts(text_codes, pattern_codes, infrequent)
    if frequent.size:
        matches += _fft_match_counts(text_codes, pattern_codes, frequent)
    return m - matches


def _collision_counts(text_codes: np.ndarray, pattern_codes: np.ndarray, bucket_of: np.ndarray) -> np.ndarray:
    """At every shift, the pairs (j, a) whose characters differ but share a bucket (the hash's false matches).

    The pattern positions are sorted by (bucket, character); the partners of a text character c are the
    positions of its bucket minus those of c itself: two contiguous ranges of the sorted order.
    """
    n_codes = bucket_of.size
    n_shifts = text_codes.size - pattern_codes.size + 1
    keys = bucket_of[pattern_codes] * n_codes + pattern_codes
    pattern_positions = np.argsort(keys, kind="stable")
    sorted_keys = keys[pattern_positions]
    text_positions = np.arange(text_codes.size)
    text_buckets = bucket_of[text_codes]
    bucket_start = np.searchsorted(sorted_keys, text_buckets * n_codes, side="left")
    bucket_end = np.searchsorted(sorted_keys, (text_buckets + 1) * n_codes, side="left")
    own_start = np.searchsorted(sorted_keys, text_buckets * n_codes + text_codes, side="left")
    own_end = np.searchsorted(sorted_keys, text_buckets * n_codes + text_codes, side="right")
    before = _shift_histogram(text_positions, pattern_positions, bucket_start, own_start - bucket_start,
                              n_shifts)
    after = _shift_histogram(text_positions, pattern_positions, own_end, bucket_end - own_end, n_shifts)
    return before + after


def hamming_hashed(text: object, pattern: object, n_buckets: int, rng: np.random.Generator) -> np.ndarray:
    """Exact Hamming distances by alphabet hashing (Las Vegas: always exact, only the running time is random).

    A random hash sends every character to one of ``n_buckets`` buckets; one FFT per bucket counts the pairs
    of positions whose characters share a bucket (true matches plus collisions), and the collisions, pairs of
    different characters in the same bucket (about n m / n_buckets of them), are listed and subtracted.
    A simplified form of Chan et al. (2023), without their bit-packed FFT and recursion.
    """
    text_codes, pattern_codes, alphabet = _encode(text, pattern)
    n_buckets = check_positive_int(n_buckets, "n_buckets")
    rng = check_generator(rng)
    bucket_of = rng.integers(0, n_buckets, size=alphabet.size)
    bucket_matches = _fft_match_counts(bucket_of[text_codes], bucket_of[pattern_codes],
                                       np.unique(bucket_of[pattern_codes]))
    true_matches = bucket_matches - _collision_counts(text_codes, pattern_codes, bucket_of)
    return pattern_codes.size - true_matches


def _check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, int | float | np.integer | np.floating):
        raise TypeError(f"eps must be a real number in (0, 1), got {type(eps).__name__}")
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    return float(eps)


def hamming_approx_hashing(
    text: object, pattern: object, eps: float, reps: int, rng: np.random.Generator
) -> np.ndarray:
    """(1 - eps)-approximate Hamming distances that never overestimate (the classical ~O(n / eps) estimator).

    Each repetition hashes the alphabet at random into b = ceil(2 / eps) buckets and computes the hashed
    distances HD_h exactly with b FFTs. Hashing only merges characters, so HD_h <= HD; a mismatch survives
    unless its two characters collide (probability 1 / b), so E[HD - HD_h] = HD / b and, by Markov's
    inequality, HD_h >= (1 - eps) HD with probability >= 1/2. The maximum over ``reps`` hashes therefore
    fails with probability <= 2^-reps at each shift.
    """
    text_codes, pattern_codes, alphabet = _encode(text, pattern)
    eps = _check_eps(eps)
    reps = check_positive_int(reps, "reps")
    rng = check_generator(rng)
    n_buckets = int(np.ceil(2 / eps))
    estimate = np.zeros(text_codes.size - pattern_codes.size + 1, dtype=np.int64)
    for _ in range(reps):
        bucket_of = rng.integers(0, n_buckets, size=alphabet.size)
        hashed_pattern = bucket_of[pattern_codes]
        hashed_matches = _fft_match_counts(bucket_of[text_codes], hashed_pattern, np.unique(hashed_pattern))
        hashed = pattern_codes.size - hashed_matches
        estimate = np.maximum(estimate, hashed)
    return estimate


def sumset_counts(x: object, y: object, universe: int) -> np.ndarray:
    """counts[s] = #{(a, b) : a in x, b in y, a + b = s} for s = 0, ..., 2 universe - 2, by one FFT.

    ``x`` and ``y`` are integer (multi)sets inside [0, universe). Per character c, the matches of a Hamming
    problem are such counts for x = positions of c in the text and y = m - 1 - positions of c in the
    pattern (the count at s = i + m - 1 is the matches at shift i).
    """
    universe = check_positive_int(universe, "universe")
    sets = []
    for name, values in (("x", x), ("y", y)):
        values = _as_symbols(values, name)
        if values.min() < 0 or values.max() >= universe:
            raise ValueError(f"{name} must lie in [0, universe) = [0, {universe}), got values in "
                             f"[{values.min()}, {values.max()}]")
        sets.append(np.bincount(values, minlength=universe).astype(float))
    length = 2 * universe - 1
    product = np.fft.rfft(sets[0], n=length) * np.fft.rfft(sets[1], n=length)
    return np.rint(np.fft.irfft(product, n=length)).astype(np.int64)
