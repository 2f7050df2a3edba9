"""Whitespace normalisation and duplicate detection for training rows.

Exact duplicates share a `dedup_key`. Near-duplicates are found with MinHash signatures of
character shingles, LSH banding to propose candidate pairs, and an exact Jaccard check of each
candidate before two rows are joined into one cluster; all of it vectorised across the dataset.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence

import numpy as np

from turing.tools.errors import InvalidInputError

WHITESPACE_MODES = ("none", "trim", "collapse")

# A shingle is four UTF-16 code units, read as one uint64 straight out of the encoded keys; four
# characters are short enough for prompts of a handful of words.
_SHINGLE_UNITS = 4
_NUM_PERMUTATIONS = 96
# Fewer rows per band means more bands and more candidate pairs; below three, time and memory
# more than double for little gain in recall.
_MIN_ROWS_PER_BAND = 3

# Signature agreement is a binomial estimate of the Jaccard similarity; a candidate this many
# standard deviations below the threshold is dropped before the exact check.
_REJECT_SIGMAS = 4.0
# Work in blocks of keys small enough for their temporaries to stay in the CPU cache and be
# reused, instead of touching fresh memory for whole-dataset temporaries.
_HASH_BLOCK = 4096
_SIGNATURE_SHINGLES = 16_384
_PAIR_BLOCK = 65_536
# Keys paired with each key before it in a band bucket, and candidate pairs per round of checks.
_BUCKET_WINDOW = 16
_ROUND_PAIRS = 16_384
# Cells of one block of the exact Jaccard check (4 MiB of uint32), and the step of row widths.
_JACCARD_CELLS = 1 << 20
_ROW_QUANTUM = 16

_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_BLANK_RUN = re.compile(r"\n{3,}")

_APOSTROPHES = "'\u2018\u2019\u02bc"
_ASCII_PUNCTUATION = "".join(c for c in string.punctuation if unicodedata.category(c)[0] == "P")
# bytes.split() misses the separators \x1c-\x1f that str.split() honours; make them spaces.
_ASCII_SPACED = _ASCII_PUNCTUATION.replace("'", "") + "\x1c\x1d\x1e\x1f"
_ASCII_TABLE = bytes.maketrans(_ASCII_SPACED.encode(), b" " * len(_ASCII_SPACED))
# A mark between two digits carries meaning ("2/3", "2*3", "1.5"), so it survives the key.
_BETWEEN_DIGITS = re.compile(r"(?<=\d)([^\w\s])(?=\d)")


# --- whitespace ----------------------------------------------------------------------------


def normalize_whitespace(text: str, mode: str) -> str:
    """Tidy the whitespace of one message without changing its words.

    Fenced code blocks (``` or ~~~) keep every character except that their line endings become
    LF, because indentation and spacing carry meaning in code. Indentation at the start of a
    line outside code is kept too, so nested Markdown lists survive.

    Args:
        text: The message content.
        mode: "none" returns the text unchanged. "trim" turns CRLF and CR into LF, strips the
            text's leading and trailing whitespace and the trailing whitespace of each line.
            "collapse" does what "trim" does, then turns each run of spaces, tabs or other
            whitespace inside a line into one space and each run of three or more newlines
            into one blank line.

    Returns:
        The normalised text.

    Raises:
        InvalidInputError: `mode` is not one of WHITESPACE_MODES.
    """
    if mode not in WHITESPACE_MODES:
        raise InvalidInputError(
            f"unknown whitespace mode {mode!r}; use one of {', '.join(WHITESPACE_MODES)}"
        )
    if mode == "none":
        return text

    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    collapse = mode == "collapse"
    if "```" in text or "~~~" in text:
        return _tidy_fenced(text, collapse).strip()
    if "\n" not in text:
        return " ".join(text.split()) if collapse else text.strip()
    return _tidy_prose(text, collapse).strip()


def _tidy_prose(text: str, collapse: bool) -> str:
    lines = text.split("\n")
    if not collapse:
        return "\n".join([line.rstrip() for line in lines])
    return _BLANK_RUN.sub("\n\n", "\n".join([_collapse_line(line) for line in lines]))


def _collapse_line(line: str) -> str:
    words = line.split()
    if not words:
        return ""
    indent = line[: len(line) - len(line.lstrip())]
    return indent + " ".join(words)


def _tidy_fenced(text: str, collapse: bool) -> str:
    """Tidy LF-separated text line by line, leaving fenced code and its fence lines as they are.

    A fence without its closing line runs to the end of the text, as in CommonMark.
    """
    kept: list[str] = []
    fence = ""
    for line in text.split("\n"):
        if fence:
            kept.append(line)
            fence = "" if _closes(line, fence) else fence
            continue
        opened = _FENCE.match(line)
        if opened:
            fence = opened.group(1)
            kept.append(line)
            continue

        line = _collapse_line(line) if collapse else line.rstrip()
        # Outside code an empty previous line is always prose, so this keeps one blank line.
        if not (collapse and not line and kept and not kept[-1]):
            kept.append(line)
    return "\n".join(kept)


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return (
        len(line) - len(line.lstrip(" ")) <= 3
        and len(stripped) >= len(fence)
        and stripped == fence[0] * len(stripped)
    )


# --- exact duplicates ----------------------------------------------------------------------


class _KeyTable(dict[int, int | str | None]):
    """str.translate table for non-ASCII text, filled one character at a time when first seen.

    Scanning all of Unicode up front costs a quarter of a second at import time.
    """

    def __missing__(self, codepoint: int) -> int | str | None:
        char = chr(codepoint)
        category = unicodedata.category(char)
        value: int | str | None = codepoint
        if char in _APOSTROPHES or category == "Cf":
            value = None
        elif category[0] == "P":
            value = " "
        self[codepoint] = value
        return value


_KEY_TABLE = _KeyTable()


def dedup_key(text: str) -> str:
    """The text reduced to what makes two rows the same, for duplicate detection.

    Applies Unicode NFKC and case folding, deletes apostrophes and invisible format characters,
    turns other punctuation into spaces (except between two digits, as in "2/3") and collapses
    whitespace. "How do I top-up my card??" and "how do i top up my card" share a key.

    Args:
        text: Any text, typically a prompt or a whole rendered conversation.

    Returns:
        The key: lower-case words separated by single spaces.
    """
    if text.isascii():
        raw = text.encode("ascii").lower()
        if _BETWEEN_DIGITS.search(text) is None:
            return b" ".join(raw.translate(_ASCII_TABLE, b"'").split()).decode("ascii")
        text = raw.decode("ascii")
    else:
        text = unicodedata.normalize("NFKC", text).casefold()

    pieces = _BETWEEN_DIGITS.split(text)
    pieces[::2] = [_drop_punctuation(piece) for piece in pieces[::2]]
    return " ".join("".join(pieces).split())


def _drop_punctuation(text: str) -> str:
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_TABLE, b"'").decode("ascii")
    return text.translate(_KEY_TABLE)


# --- near duplicates -----------------------------------------------------------------------


def find_near_duplicates(
    texts: Sequence[str], threshold: float = 0.8, *, seed: int = 0
) -> list[int]:
    """Group texts that are the same or nearly the same, for de-duplication and splitting.

    Similarity is the Jaccard similarity of the sets of 4-character shingles of the texts'
    dedup keys (padded with a space at each end). MinHash and LSH banding propose candidate
    pairs; each candidate is confirmed with its exact Jaccard similarity, and confirmed pairs
    are joined transitively. Texts with the same dedup key are always in one cluster.

    Banding proposes a pair at the threshold with at least 99 % probability, more above it;
    below a threshold of about 0.5 recall drops. In a crowded bucket each text meets a bounded
    sample of the others, but a text usually has several routes into its cluster. 100,000
    prompts take about a second at the default threshold, more at lower thresholds.

    Args:
        texts: The texts to compare, e.g. the prompt of every row.
        threshold: The Jaccard similarity from which two texts count as near-duplicates, in
            (0, 1]. At 0.8 a typo or an extra word in a long sentence joins, a different
            content word in a short question does not.
        seed: A non-negative integer seeding the MinHash permutations and the shuffles inside
            band buckets; the same texts and seed give the same clusters in every run and
            process.

    Returns:
        For each text, the index of the first text of its cluster, so a text that starts its
        own cluster maps to itself.

    Raises:
        InvalidInputError: `threshold` is outside (0, 1] or `seed` is negative.
    """
    return cluster_keys([dedup_key(text) for text in texts], threshold, seed=seed)


def cluster_keys(keys: Sequence[str], threshold: float = 0.8, *, seed: int = 0) -> list[int]:
    """`find_near_duplicates` over texts already reduced with `dedup_key`.

    For a caller that needs the keys for something else too, so they are computed once.
    """
    if not 0.0 < threshold <= 1.0:
        raise InvalidInputError(f"threshold must be in (0, 1], got {threshold}")
    if seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed}")

    firsts: dict[str, int] = {}
    for index, key in enumerate(keys):
        firsts.setdefault(key, index)
    if len(firsts) < 2:
        return [firsts[key] for key in keys]

    hashes, starts = _shingle_hashes(list(firsts))
    signatures = _signatures(hashes, starts, seed)
    pairs = _candidate_pairs(signatures, _rows_per_band(threshold), seed)
    pairs = _likely_pairs(pairs, signatures, threshold)
    roots = _join_verified(len(firsts), pairs, hashes, starts, threshold)

    first_index = np.fromiter(firsts.values(), dtype=np.int64, count=len(firsts))
    cluster_of_key = dict(zip(firsts, first_index[roots].tolist(), strict=True))
    return [cluster_of_key[key] for key in keys]


def _shingle_hashes(keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A 31-bit hash of every shingle of every padded key, and where each key's shingles start.

    A key shorter than a shingle gets one shingle, completed with NUL characters.
    """
    units = np.fromiter(
        (len(k) if k.isascii() else len(k.encode("utf-16-le")) // 2 for k in keys),
        dtype=np.int64,
        count=len(keys),
    )
    padded = units + 2
    # Two NULs after each padded key keep the one shingle of a short key inside its own text.
    stride = padded + 2
    first_unit = np.cumsum(stride) - stride
    data = (" " + " \0\0 ".join(keys) + " \0\0").encode("utf-16-le")
    # Every uint64 starting at a 2-byte step is one shingle of _SHINGLE_UNITS code units.
    windows = np.ndarray(
        (len(data) // 2 - _SHINGLE_UNITS + 1,), dtype="<u8", buffer=data, strides=(2,)
    )

    counts = np.maximum(padded - _SHINGLE_UNITS + 1, 1)
    starts = np.zeros(len(keys) + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    shift = first_unit - starts[:-1]

    hashes = np.empty(starts[-1], dtype=np.uint32)
    for first in range(0, len(keys), _HASH_BLOCK):
        last = min(first + _HASH_BLOCK, len(keys))
        positions = np.arange(starts[first], starts[last])
        positions += np.repeat(shift[first:last], counts[first:last])
        hashes[starts[first] : starts[last]] = _hash31(windows[positions])
    return hashes, starts


def _hash31(values: np.ndarray) -> np.ndarray:
    """A well-spread 31-bit hash of each uint64, the same in every process.

    The spare top bit lets the exact Jaccard check tag each hash with its side of a pair.
    """
    mixed = np.multiply(values, np.uint64(0x9E3779B97F4A7C15))
    mixed ^= mixed >> np.uint64(31)
    mixed *= np.uint64(0xBF58476D1CE4E5B9)
    mixed ^= mixed >> np.uint64(29)
    return (mixed >> np.uint64(33)).astype(np.uint32)


def _signatures(hashes: np.ndarray, starts: np.ndarray, seed: int) -> np.ndarray:
    """The MinHash signature of every key, one row of _NUM_PERMUTATIONS uint32 values per key.

    Shingles are permuted in fixed-size chunks, so memory stays bounded even for a huge key; a
    key cut by a chunk boundary takes the minimum of its parts.
    """
    rng = np.random.default_rng(seed)
    multipliers = rng.integers(0, 2**32, _NUM_PERMUTATIONS, dtype=np.uint64).astype(np.uint32) | 1
    offsets = rng.integers(0, 2**32, _NUM_PERMUTATIONS, dtype=np.uint64).astype(np.uint32)

    signatures = np.full((len(starts) - 1, _NUM_PERMUTATIONS), 0xFFFFFFFF, dtype=np.uint32)
    scratch = np.empty(_NUM_PERMUTATIONS * _SIGNATURE_SHINGLES, dtype=np.uint32)
    for low in range(0, len(hashes), _SIGNATURE_SHINGLES):
        chunk = hashes[low : low + _SIGNATURE_SHINGLES]
        first = int(np.searchsorted(starts, low, side="right")) - 1
        last = int(np.searchsorted(starts, low + len(chunk), side="left"))
        # One row per permutation keeps each multiply a long contiguous vector operation.
        permuted = scratch[: _NUM_PERMUTATIONS * len(chunk)].reshape(_NUM_PERMUTATIONS, -1)
        np.multiply(chunk[None, :], multipliers[:, None], out=permuted)
        permuted += offsets[:, None]

        bounds = np.maximum(starts[first:last] - low, 0)
        lowest = np.minimum.reduceat(permuted, bounds, axis=1).T
        np.minimum(signatures[first:last], lowest, out=signatures[first:last])
    return signatures


def _rows_per_band(threshold: float) -> int:
    """The longest band that still proposes a pair at the threshold with 99 % probability.

    Longer bands propose fewer dissimilar pairs, so fewer pairs need checking. Below a threshold
    of about 0.5 even the shortest allowed band falls short of 99 %.
    """
    for rows in range(8, _MIN_ROWS_PER_BAND, -1):
        bands = _NUM_PERMUTATIONS // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= 0.99:
            return rows
    return _MIN_ROWS_PER_BAND


def _candidate_pairs(signatures: np.ndarray, rows_per_band: int, seed: int) -> np.ndarray:
    """Unique (larger, smaller) index pairs of keys that share a band bucket, as an (n, 2) array.

    Inside a bucket each key is paired with the _BUCKET_WINDOW keys before it: every pair of a
    small bucket, and a bounded number per key in a large one. The order inside a bucket is
    shuffled afresh for every band, so a key of a large bucket meets different keys each time.
    """
    count = len(signatures)
    indexes = np.arange(count, dtype=np.uint64)
    rng = np.random.default_rng([seed, 1])
    codes = []
    for bucket in _band_buckets(signatures, rows_per_band).T:
        # Odd multipliers permute 32-bit numbers, so the shuffled index can be turned back.
        multiplier = int(rng.integers(0, 2**32, dtype=np.uint64)) | 1
        inverse = np.uint64(pow(multiplier, -1, 2**32))
        shuffled = (indexes * np.uint64(multiplier)) & np.uint64(0xFFFFFFFF)
        placed = np.sort((bucket << np.uint64(32)) | shuffled)
        order = ((placed * inverse) & np.uint64(0xFFFFFFFF)).astype(np.int64)
        ordered = placed >> np.uint64(32)
        for distance in range(1, min(_BUCKET_WINDOW, count - 1) + 1):
            shared = ordered[distance:] == ordered[:-distance]
            later, earlier = order[distance:][shared], order[:-distance][shared]
            codes.append(np.maximum(later, earlier) * count + np.minimum(later, earlier))

    # Sorting and dropping repeats beats np.unique, which hashes large integer arrays.
    merged = np.sort(np.concatenate(codes))
    first_seen = np.ones(len(merged), dtype=bool)
    np.not_equal(merged[1:], merged[:-1], out=first_seen[1:])
    unique = merged[first_seen]
    return np.stack([unique // count, unique % count], axis=1)


def _band_buckets(signatures: np.ndarray, rows_per_band: int) -> np.ndarray:
    """A 32-bit bucket number for every key and band, as a (keys, bands) uint64 array."""
    bands = _NUM_PERMUTATIONS // rows_per_band
    values = signatures[:, : bands * rows_per_band].reshape(len(signatures), bands, -1)
    hashed = np.zeros((len(signatures), bands), dtype=np.uint64)
    for column in range(rows_per_band):
        hashed ^= values[:, :, column]
        hashed *= np.uint64(0x100000001B3)
        hashed ^= hashed >> np.uint64(29)
    return hashed >> np.uint64(32)


def _likely_pairs(pairs: np.ndarray, signatures: np.ndarray, threshold: float) -> np.ndarray:
    """The pairs whose signatures agree often enough to be worth the exact check, best first."""
    spread = (threshold * (1.0 - threshold) / _NUM_PERMUTATIONS) ** 0.5
    floor = (threshold - _REJECT_SIGMAS * spread) * _NUM_PERMUTATIONS
    # The low byte of each value agrees by chance only 1 time in 256, a negligible bias, and
    # gathering bytes instead of whole values is most of the cost here.
    low_bytes = signatures.astype(np.uint8)
    agreements = np.empty(len(pairs), dtype=np.int64)
    for first in range(0, len(pairs), _PAIR_BLOCK):
        block = pairs[first : first + _PAIR_BLOCK]
        same = low_bytes[block[:, 0]] == low_bytes[block[:, 1]]
        agreements[first : first + len(block)] = np.count_nonzero(same, axis=1)

    kept = np.flatnonzero(agreements >= floor)
    return pairs[kept[np.argsort(-agreements[kept], kind="stable")]]


def _join_verified(
    count: int, pairs: np.ndarray, hashes: np.ndarray, starts: np.ndarray, threshold: float
) -> np.ndarray:
    """Each key's cluster root after joining the pairs whose exact Jaccard reaches the threshold.

    The first round checks each key's most similar candidate only, which links most clusters
    with about one check per key. Later rounds take the other pairs, most similar first, and
    skip a pair whose keys are already in one cluster.
    """
    best = _best_pair_of_each_key(pairs)
    rest = np.ones(len(pairs), dtype=bool)
    rest[best] = False

    roots = _merge_clusters(np.arange(count), _verified(pairs[best], hashes, starts, threshold))
    pairs = pairs[rest]
    for first in range(0, len(pairs), _ROUND_PAIRS):
        block = pairs[first : first + _ROUND_PAIRS]
        block = block[roots[block[:, 0]] != roots[block[:, 1]]]
        roots = _merge_clusters(roots, _verified(block, hashes, starts, threshold))
    return roots


def _best_pair_of_each_key(pairs: np.ndarray) -> np.ndarray:
    """Indexes of the pairs that are the first, so most similar, pair of either of their keys."""
    _, first_place = np.unique(pairs.ravel(), return_index=True)
    return np.unique(first_place // 2)


def _verified(
    pairs: np.ndarray, hashes: np.ndarray, starts: np.ndarray, threshold: float
) -> np.ndarray:
    return pairs[_exact_jaccard(pairs, hashes, starts) >= threshold]


def _exact_jaccard(pairs: np.ndarray, hashes: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The Jaccard similarity of the shingle hash sets of each pair of keys.

    Exact over the 31-bit hashes: two different shingles of a pair share a hash about once in
    two billion comparisons. Pairs are grouped by the row width that holds both keys, so one
    row-wise sort of a matrix handles a whole block of pairs.
    """
    sizes = np.diff(starts)
    totals = sizes[pairs[:, 0]] + sizes[pairs[:, 1]]
    widths = -(-totals // _ROW_QUANTUM) * _ROW_QUANTUM
    similarity = np.empty(len(pairs))
    for width in np.unique(widths).tolist():
        chosen = np.flatnonzero(widths == width)
        step = max(1, _JACCARD_CELLS // width)
        for first in range(0, len(chosen), step):
            block = chosen[first : first + step]
            left, right = pairs[block, 0], pairs[block, 1]
            similarity[block] = _jaccard_rows(hashes, starts, sizes, left, right, width)
    return similarity


def _jaccard_rows(
    hashes: np.ndarray,
    starts: np.ndarray,
    sizes: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    width: int,
) -> np.ndarray:
    """Exact Jaccard similarities of key pairs, one matrix row per pair holding both keys.

    Each hash is shifted left and tagged with its side in the low bit; after sorting a row,
    distinct tagged values count the two sets and distinct hashes count their union. Cells past
    both keys repeat the left key's first shingle, which changes neither count.
    """
    columns = np.arange(width)
    left_size = sizes[left][:, None]
    total = left_size + sizes[right][:, None]
    on_right = (columns >= left_size) & (columns < total)
    index = np.where(on_right, (starts[right] - sizes[left])[:, None], starts[left][:, None])
    index += columns
    index = np.where(columns < total, index, starts[left][:, None])

    rows = hashes[index]
    rows <<= np.uint32(1)
    rows |= on_right
    rows.sort(axis=1)

    distinct = 1 + np.count_nonzero(rows[:, 1:] != rows[:, :-1], axis=1)
    rows >>= np.uint32(1)
    union = 1 + np.count_nonzero(rows[:, 1:] != rows[:, :-1], axis=1)
    return (distinct - union) / union


def _merge_clusters(roots: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Join the clusters of both keys of every pair; a root is its cluster's smallest key index.

    `roots` maps every key straight to its root. Each pass hooks the larger root of every
    still-split pair under the smaller one, then compresses paths by pointer jumping.
    """
    left, right = pairs[:, 0], pairs[:, 1]
    while True:
        left_root, right_root = roots[left], roots[right]
        apart = left_root != right_root
        if not apart.any():
            return roots
        high = np.maximum(left_root[apart], right_root[apart])
        low = np.minimum(left_root[apart], right_root[apart])
        np.minimum.at(roots, high, low)
        while True:
            jumped = roots[roots]
            if np.array_equal(jumped, roots):
                break
            roots = jumped
