"""What a strategy's estimates used, counted over its runs: each (window, hyperparameter)
entry's use (`usage`: extrapolated, window mean or local) and why it did not extrapolate,
for the tables and chapters."""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .. import OuterResult
from ..estimators import USES


class Usage(NamedTuple):
    """What a strategy's estimates used, pooled over runs: `entries`, the (window,
    hyperparameter) pairs; `counts`, `{use: entries}` for each of
    `glocal_core.estimators.USES`; `reasons`, `{why not extrapolated: entries}`, in
    first-seen order."""

    entries: int
    counts: dict[str, int]
    reasons: dict[str, int]

    def share(self, use: str) -> float:
        """The share of entries that took `use` (0 where there are none)."""
        return self.counts.get(use, 0) / max(self.entries, 1)


def usage(runs: Sequence[OuterResult]) -> Usage:
    """`Usage` pooled over `runs` (the seeds of one strategy), from `OuterResult.used` and
    `OuterResult.reasons`."""
    used = [u for r in runs for u in np.asarray(r.used).ravel()]
    counts = {use: sum(u == use for u in used) for use in USES}
    reasons: dict[str, int] = {}
    for why in (w for r in runs for w in np.asarray(r.reasons).ravel() if w):
        reasons[why] = reasons.get(why, 0) + 1
    return Usage(len(used), counts, reasons)
