"""The train/validation split: seeded, stratified by label, and never splitting a group.

A group is a set of rows whose prompts are copies or near copies of each other; putting all of
it on one side is what keeps validation free of rows the model has seen in another spelling.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Sequence


def held_out_rows(
    groups: Sequence[int],
    labels: Sequence[str] | None,
    draw_keys: Sequence[str],
    fraction: float,
    seed: int,
) -> set[int]:
    """The indices of the rows to hold out for validation.

    Args:
        groups: Each row's group; rows of one group land on the same side.
        labels: Each row's class label, to stratify by, or None.
        draw_keys: Each row's content key; a group's place in the draw hashes its first row's
            key with the seed, so a row's side does not move when other rows come or go.
        fraction: The share of rows to hold out, at most; each label keeps a training row.
        seed: Chooses the split.
    """
    members: dict[int, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)

    strata: dict[str, list[int]] = defaultdict(list)
    for group, indices in members.items():
        strata[_majority(labels, indices) if labels is not None else ""].append(group)
    sizes = {name: sum(len(members[group]) for group in chosen) for name, chosen in strata.items()}
    quotas = _quotas(sizes, fraction)

    held_out: set[int] = set()
    for name in sorted(strata):
        order = sorted(strata[name], key=lambda group: _draw(seed, draw_keys[members[group][0]]))
        held_out |= _fill(order, members, quotas[name])
    return held_out


def _majority(labels: Sequence[str], indices: list[int]) -> str:
    counts = Counter(labels[index] for index in indices)
    return min(counts, key=lambda label: (-counts[label], label))


def _draw(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest()


def _quotas(sizes: dict[str, int], fraction: float) -> dict[str, int]:
    """Validation rows per stratum, proportional, by largest remainder, keeping one train row."""
    total = sum(sizes.values())
    target = math.floor(total * fraction + 1e-9)  # never more than the fraction asked for

    eligible = {name: size for name, size in sizes.items() if size >= 2}
    quotas = {name: 0 for name in sizes}
    quotas.update({name: math.floor(size * fraction) for name, size in eligible.items()})
    by_remainder = sorted(eligible, key=lambda name: (-(eligible[name] * fraction % 1), name))
    for name in by_remainder:
        if sum(quotas.values()) >= target:
            break
        quotas[name] = min(quotas[name] + 1, eligible[name] - 1)
    return quotas


def _fill(order: list[int], members: dict[int, list[int]], quota: int) -> set[int]:
    chosen: set[int] = set()
    for group in order:
        if len(chosen) + len(members[group]) <= quota:
            chosen.update(members[group])
        if len(chosen) == quota:
            break
    return chosen
