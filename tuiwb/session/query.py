"""The feature table's ``/`` search language, and sorting, on whole columns at once.

A query is space-separated terms, all of which must hold:

* ``#12`` or ``12`` — feature id 12 (several ids: any of them);
* ``d:0.01..0.1`` / ``d>0.01`` / ``d<0.1`` — density range (fraction of tokens the feature fires on;
  the range syntax of ``tuiwb features --density``, :func:`tuiwb.features.search.parse_range`);
* ``max>2`` / ``max<1`` — max activation bound;
* any other word — a substring of the feature's top tokens (case-insensitive).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from tuiwb.errors import TuiwbError
from tuiwb.features.search import parse_number, parse_range
from tuiwb.session.views import FeatureRows

_RANGE = re.compile(r"^(d|density|max):(.*\.\..*)$")
_BOUND = re.compile(r"^(d|density|max)([<>])=?([-+0-9.e]+)$")
_ID = re.compile(r"^#?(\d+)$")

SORTS = ("rank", "density-", "density+", "max-", "id")
"""Sort modes ``s`` cycles through: contrast rank, density high→low / low→high, max act, id."""
SORT_LABELS = {"rank": "contrast rank", "density-": "density ↓", "density+": "density ↑", "max-": "max act ↓",
               "id": "id"}


@dataclass(frozen=True)
class FeatureQuery:
    """A parsed search."""

    ids: frozenset[int] = frozenset()
    """Feature ids to keep (empty: no id filter)."""
    density: tuple[float, float] = (-np.inf, np.inf)
    """Inclusive density range."""
    max_act: tuple[float, float] = (-np.inf, np.inf)
    """Inclusive max-activation range."""
    words: tuple[str, ...] = field(default=())
    """Lower-case substrings that must all occur in the top tokens."""

    @property
    def empty(self) -> bool:
        return self == FeatureQuery()


def parse_query(text: str) -> FeatureQuery:
    """Parse the search bar's text; raises ``ValueError`` with a readable message on a bad term."""
    try:
        return _parse(text)
    except TuiwbError as e:  # parse_range's RangeError is a TuiwbError, not a ValueError: one type here
        raise ValueError(str(e)) from None


def _parse(text: str) -> FeatureQuery:
    ids: set[int] = set()
    dens = [-np.inf, np.inf]
    mx = [-np.inf, np.inf]
    words: list[str] = []
    for term in text.split():
        low = term.lower()
        if m := _ID.match(low):
            ids.add(int(m.group(1)))
        elif m := _RANGE.match(low):
            target = mx if m.group(1) == "max" else dens
            target[0], target[1] = parse_range(m.group(2), (-np.inf, np.inf))
        elif m := _BOUND.match(low):
            target = mx if m.group(1) == "max" else dens
            if m.group(2) == ">":
                target[0] = parse_number(m.group(3), -np.inf)
            else:
                target[1] = parse_number(m.group(3), np.inf)
        else:
            words.append(low)
    return FeatureQuery(ids=frozenset(ids), density=(dens[0], dens[1]), max_act=(mx[0], mx[1]),
                        words=tuple(words))


def query_mask(rows: FeatureRows, q: FeatureQuery) -> np.ndarray:
    """Boolean ``[n]``: which rows match."""
    mask = np.ones(len(rows), dtype=bool)
    if q.ids:
        mask &= np.isin(rows.ids, np.fromiter(q.ids, dtype=np.int64))
    if q.density != (-np.inf, np.inf):
        mask &= (rows.density >= q.density[0]) & (rows.density <= q.density[1])
    if q.max_act != (-np.inf, np.inf):
        mask &= (rows.max_act >= q.max_act[0]) & (rows.max_act <= q.max_act[1])
    for w in q.words:
        idx = np.flatnonzero(mask)
        keep = np.fromiter((w in rows.top_lower[i] for i in idx), dtype=bool, count=len(idx))
        mask[idx[~keep]] = False
    return mask


def sorted_order(rows: FeatureRows, mask: np.ndarray, sort: str, ranked: tuple[int, ...] = ()) -> np.ndarray:
    """Row indices to show, in display order. ``ranked`` (contrast hits) come first in ``rank`` mode."""
    idx = np.flatnonzero(mask)
    if sort == "density-":
        return idx[np.argsort(-rows.density[idx], kind="stable")]
    if sort == "density+":
        return idx[np.argsort(rows.density[idx], kind="stable")]
    if sort == "max-":
        return idx[np.argsort(-rows.max_act[idx], kind="stable")]
    if sort == "id":
        return idx[np.argsort(rows.ids[idx], kind="stable")]
    # rank: contrast hits in rank order, then the rest by density (high first)
    row_of = {int(fid): i for i, fid in enumerate(rows.ids)} if ranked else {}
    head = [row_of[f] for f in ranked if f in row_of and mask[row_of[f]]]
    rest = idx[np.argsort(-rows.density[idx], kind="stable")]
    if head:
        rest = rest[~np.isin(rest, head)]
    return np.concatenate([np.asarray(head, dtype=np.int64), rest]) if head else rest
