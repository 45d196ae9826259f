"""Screen snapshots of the workbench on the small demo model (pytest-textual-snapshot).

The status line runs with ``fixed_status`` (no measured milliseconds), the terminal size is fixed,
and every worker has finished before the picture is taken, so the SVGs are deterministic.
Update after an intended change with ``pytest tests/ui/test_snapshots.py --snapshot-update`` and
look at the new SVGs before committing them.
"""

from __future__ import annotations

import pytest


async def _ready(pilot) -> None:
    for _ in range(3):
        await pilot.pause(0.1)
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def test_main_screen_160x50(snap_compare, demo_app):
    assert snap_compare(demo_app, terminal_size=(160, 50), run_before=_ready)


def test_main_screen_80x24(snap_compare, demo_app):
    assert snap_compare(demo_app, terminal_size=(80, 24), run_before=_ready)


def test_continuation_page_80x24(snap_compare, demo_app):
    """Page 5 after space: the payload in the baseline, gone from the patched side, divergence marked."""
    async def toggled(pilot) -> None:
        await _ready(pilot)
        for key in ("space", "5"):
            await pilot.press(key)
            await _ready(pilot)

    assert snap_compare(demo_app, terminal_size=(80, 24), run_before=toggled)


def test_help_screen(snap_compare, demo_app):
    assert snap_compare(demo_app, terminal_size=(110, 44), press=["question_mark"], run_before=_ready)


SIZES = [(80, 24), (120, 36), (200, 60)]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_screen_sizes(snap_compare, demo_app, size):
    assert snap_compare(demo_app, terminal_size=size, run_before=_ready)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("key", ["question_mark", "c"], ids=["help", "contrast"])
def test_dialogs_fit(snap_compare, demo_app, key, size):
    """Every dialog fits (or scrolls) at every size: issue 18 found the contrast dialog clipped at 80×24."""
    assert snap_compare(demo_app, terminal_size=size, press=[key], run_before=_ready)
