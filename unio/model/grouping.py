"""Length groups: the decoder runs a batch whose targets differ in length (3-token answers beside
65-token image codes) in a few groups of similar length instead of padding all to the longest
(``UnioForConditionalGeneration.forward`` with ``logits_mask``)."""
from __future__ import annotations

from collections import Counter

__all__ = ["length_groups"]


def length_groups(lengths: list[int], max_groups: int = 3, multiple: int = 8,
                  group_cost: float = 0.05) -> list[tuple[list[int], int]]:
    """Split samples into at most ``max_groups`` groups of similar ``lengths``: [(sample indices,
    padded length), ...], minimising the padded tokens (lengths rounded up to ``multiple``) plus
    ``group_cost`` x batch x longest length for each group beyond the first (the per-pass overhead
    of smaller matmuls). Samples with nothing to keep (length 0) are left out."""
    rounded = {i: -(-n // multiple) * multiple for i, n in enumerate(lengths) if n > 0}
    if not rounded:
        return []
    tally = Counter(rounded.values())
    values = sorted(tally)
    counts = [tally[x] for x in values]
    penalty = group_cost * len(rounded) * values[-1]
    # best[k][j]: cheapest cost of the first j distinct lengths in k groups, and where its last group starts
    K, J = min(max_groups, len(values)), len(values)
    best = [[(float("inf"), 0)] * (J + 1) for _ in range(K + 1)]
    best[0][0] = (0.0, 0)
    for k in range(1, K + 1):
        for j in range(1, J + 1):
            best[k][j] = min((best[k - 1][i][0] + sum(counts[i:j]) * values[j - 1] + (k > 1) * penalty, i)
                             for i in range(j))
    k = min(range(1, K + 1), key=lambda k: best[k][J][0])
    bounds, j = [], J
    while k > 0:
        i = best[k][j][1]
        bounds.append((values[i], values[j - 1]))
        j, k = i, k - 1
    return [([i for i, v in rounded.items() if lo <= v <= hi], min(hi, max(lengths))) for lo, hi in reversed(bounds)]
