"""Whether the phrases found in a text satisfy a co-occurrence rule.

A rule (:class:`~schoolgate.monitoring.library.Rule`) has word groups; the matcher finds
where each group's phrases are, as word spans ``(first word, word after the last)``, and asks
:func:`satisfied`. The answer takes time in proportion to the spans found (times their log),
whatever a pupil repeats: a text of a thousand "how to"s and one "die" is still one pass.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence

Span = tuple[int, int]  # (first word, the word after the last)


def satisfied(spans: Sequence[Sequence[Span]], within: int | None, ordered: bool) -> bool:
    """Whether one span of every group can be chosen so that, if ``ordered``, each starts at
    or after the end of the one before, and, if ``within``, they all lie in ``within``
    consecutive words. ``spans``: for each group, where its phrases were found."""
    if not spans or not all(spans):
        return False
    # The usual: each group found once. One loop, no sorting (Python calls cost more here
    # than the few comparisons).
    low = high = -1
    for found in spans:
        if len(found) != 1:
            break
        start, end = found[0]
        if low < 0:
            low = start
        elif ordered:
            if start < high:
                return False
        elif start < low:
            low = start
        if end > high:
            high = end
    else:
        return within is None or high - low <= within
    if len(spans) == 2:
        if len(spans[0]) * len(spans[1]) <= _PAIRS:
            return _pair(spans[0], spans[1], within, ordered)
    elif math.prod(map(len, spans)) <= _CHOICES:
        return _few(spans, within, ordered)
    if ordered:
        return _ordered(spans, within)
    if within is None:
        return True
    return _unordered_within(spans, within)


_PAIRS = 16  # two groups with at most this many pairs of spans: every pair is tried
_CHOICES = 8  # likewise, more groups with at most this many choices of one span each


def _pair(first: Sequence[Span], second: Sequence[Span], within: int | None, ordered: bool) -> bool:
    """:func:`satisfied` for two groups, by trying each pair (no sorting, no heap: cheaper for
    the few spans a text has)."""
    for start, end in first:
        for other_start, other_end in second:
            if ordered:
                if other_start < end:
                    continue
                low, high = start, other_end
            else:
                low = start if start < other_start else other_start
                high = end if end > other_end else other_end
            if within is None or high - low <= within:
                return True
    return False


def _few(spans: Sequence[Sequence[Span]], within: int | None, ordered: bool) -> bool:
    """:func:`satisfied` by trying every choice of one span per group."""
    for chosen in itertools.product(*spans):
        if ordered:
            end = -1
            for start, after in chosen:
                if start < end:
                    break
                end = after
            else:
                if within is None or end - chosen[0][0] <= within:
                    return True
        else:
            low = min(start for start, _ in chosen)
            high = max(end for _, end in chosen)
            if within is None or high - low <= within:
                return True
    return False


def _ordered(spans: Sequence[Sequence[Span]], within: int | None) -> bool:
    """Chains of one span per group in order; for each span of a group, the latest start of
    a chain that ends with it (the shortest such chain)."""
    # Every span, by its start; a span is processed once all spans starting before it are.
    events = sorted(
        (start, end, group) for group, found in enumerate(spans) for start, end in found
    )
    last = len(spans) - 1
    pending: list[list[tuple[int, int]]] = [[] for _ in spans]  # (end, chain start) heaps
    ready = [-1] * len(spans)  # the latest chain start among chains that have ended
    for start, end, group in events:
        if group == 0:
            chain = start
        else:
            waiting = pending[group - 1]
            while waiting and waiting[0][0] <= start:
                ready[group - 1] = max(ready[group - 1], heapq.heappop(waiting)[1])
            chain = ready[group - 1]
            if chain < 0:
                continue
        if group == last:
            if within is None or end - chain <= within:
                return True
            continue
        heapq.heappush(pending[group], (end, chain))
    return False


def _unordered_within(spans: Sequence[Sequence[Span]], within: int) -> bool:
    """A window of ``within`` words starting at word ``w`` holds a span when
    ``end - within <= w <= start``: each span allows an interval of ``w``. Sweep those
    intervals and look for a ``w`` every group allows."""
    events: list[tuple[int, int, int]] = []  # (w, 0 = opens / 1 = closes, group)
    for group, found in enumerate(spans):
        for start, end in found:
            low = end - within
            if low <= start:
                events.append((low, 0, group))
                events.append((start, 1, group))
    events.sort()
    open_count = [0] * len(spans)
    covered = 0
    for _, kind, group in events:
        if kind == 0:
            open_count[group] += 1
            if open_count[group] == 1:
                covered += 1
                if covered == len(spans):
                    return True
        else:
            open_count[group] -= 1
            if open_count[group] == 0:
                covered -= 1
    return False
