"""The feature table's search language and sort orders, on synthetic columns (no model, fast)."""

import numpy as np
import pytest

from tuiwb.session.query import parse_query, query_mask, sorted_order
from tuiwb.session.views import FeatureRows


def _rows(n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    words = np.array(["cat", "dog", "cerulean", "park", "the", "."])
    tops = tuple(", ".join(rng.choice(words, 3)) for _ in range(n))
    return FeatureRows(layer=1, ids=np.arange(n), density=rng.random(n) * 0.1, max_act=rng.random(n) * 5,
                       top_tokens=tops)


def test_id_terms_select_exactly_those_features():
    rows = _rows()
    mask = query_mask(rows, parse_query("#12 345"))
    assert sorted(rows.ids[mask].tolist()) == [12, 345]


def test_density_range_and_bounds():
    rows = _rows()
    m = query_mask(rows, parse_query("d:0.01..0.02"))
    assert m.any() and (rows.density[m] >= 0.01).all() and (rows.density[m] <= 0.02).all()
    outside = ~m
    assert ((rows.density[outside] < 0.01) | (rows.density[outside] > 0.02)).all()
    m2 = query_mask(rows, parse_query("d>0.05 max<1"))
    assert (rows.density[m2] >= 0.05).all() and (rows.max_act[m2] <= 1).all()
    assert m2.sum() < m.size


def test_words_match_top_tokens_case_insensitively_and_combine_with_and():
    rows = _rows(2000)
    m = query_mask(rows, parse_query("CERULEAN park"))
    hits = [rows.top_tokens[i] for i in np.flatnonzero(m)]
    assert hits and all("cerulean" in t and "park" in t for t in hits)
    missed = [rows.top_tokens[i] for i in np.flatnonzero(~m)]
    assert all(not ("cerulean" in t and "park" in t) for t in missed)


def test_bad_number_is_a_readable_error():
    with pytest.raises(ValueError, match="not a number"):
        parse_query("d:1e..")


def test_empty_query_keeps_everything():
    rows = _rows(100)
    assert parse_query("  ").empty
    assert query_mask(rows, parse_query("")).all()


def test_sorts_and_ranked_features_first():
    rows = _rows(500)
    mask = np.ones(len(rows), bool)
    dens = sorted_order(rows, mask, "density-")
    assert (np.diff(rows.density[dens]) <= 0).all()
    up = sorted_order(rows, mask, "density+")
    assert (np.diff(rows.density[up]) >= 0).all()
    mx = sorted_order(rows, mask, "max-")
    assert (np.diff(rows.max_act[mx]) <= 0).all()
    ranked = (7, 300, 2)
    order = sorted_order(rows, mask, "rank", ranked)
    assert order[:3].tolist() == [7, 300, 2]
    assert sorted(order.tolist()) == list(range(500))  # nothing lost or repeated
    # a filter hides ranked features too
    m = mask.copy()
    m[300] = False
    assert sorted_order(rows, m, "rank", ranked)[:2].tolist() == [7, 2]
