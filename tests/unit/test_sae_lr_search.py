"""The `lr auto` walk over the LR grid, on synthetic probe results (no training)."""

import math

import pytest

from tuiwb.sae import lr_search
from tuiwb.sae.lr_search import LR_GRID, search_lr


@pytest.mark.parametrize("best", [LR_GRID[1], LR_GRID[4], LR_GRID[-1]])
def test_walk_finds_the_minimum_of_a_unimodal_curve_with_few_probes(monkeypatch, best):
    calls = []

    def fake_probe(sae, batches, val, cfg, steps, lr, scale):
        calls.append(lr)
        return 0.01 * (1 + math.log(lr / best) ** 2)  # unimodal in log-LR, minimum at `best`

    monkeypatch.setattr(lr_search, "probe", fake_probe)
    lr, fvus = search_lr(None, lambda: iter(()), None, None, 10, 1.0, start=4e-3)
    assert lr == best and set(fvus) == set(calls) and len(calls) == len(set(calls))
    assert len(calls) < len(LR_GRID) or best == LR_GRID[-1]  # it walks, it does not sweep everything


def test_ties_go_to_the_lower_lr(monkeypatch):
    curve = {lr: 0.02 for lr in LR_GRID}
    curve[LR_GRID[4]] = 0.0100
    curve[LR_GRID[3]] = 0.0102  # within TOLERANCE of the best: the lower LR wins
    monkeypatch.setattr(lr_search, "probe", lambda s, b, v, c, st, lr, sc: curve[lr])
    lr, _ = search_lr(None, lambda: iter(()), None, None, 10, 1.0, start=LR_GRID[4])
    assert lr == LR_GRID[3]
    assert "within 3%" in lr_search.describe(lr, {k: curve[k] for k in LR_GRID[2:6]}, 10, 512)
