"""Issue 18, "the workbench as a researcher meets it": one test per finding, on the small demo lab."""

from __future__ import annotations

import pytest

from test_app import screen_text, settle, type_text, until
from tuiwb.session.views import LogitRow, LogitsView
from tuiwb.tui.app import PAGE_FOCUS
from tuiwb.tui.screens.contrast import ContrastDialog
from tuiwb.tui.widgets.contexts import Contexts
from tuiwb.tui.widgets.key_bar import fit
from tuiwb.tui.widgets.logit_bars import LogitBars
from tuiwb.tui.widgets.prompt import PromptEditor
from tuiwb.tui.widgets.provenance import ProvenanceView

pytestmark = pytest.mark.asyncio


# 1 — no keyboard trap: Esc (and Tab) leave the prompt on every page, in both layouts
@pytest.mark.parametrize("size", [(80, 24), (160, 50)])
async def test_esc_and_tab_leave_the_prompt_on_every_page(demo_app, size):
    app = demo_app
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        editor = app.query_one(PromptEditor)
        for n in (1, 2, 3, 4):
            await pilot.press(str(n))
            await pilot.press("p")
            assert app.focused is editor
            await pilot.press("escape")
            assert isinstance(app.focused, PAGE_FOCUS[n]), (n, app.focused)
            assert app.focused.region.area > 0  # a visible pane, never a hidden page's
            await pilot.press("p", "tab")
            assert app.focused is not editor and app.focused.region.area > 0, n
        before = editor.value
        await pilot.press("p", "escape", "1", "4")  # page keys after Esc switch pages, never type
        assert editor.value == before and app.page == 4


# 2 — every dialog fits 80×24: each field of the contrast dialog is on screen
async def test_the_contrast_dialog_fits_80x24(demo_app):
    app = demo_app
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, ContrastDialog)
        for wid in ("#contrast-pos", "#contrast-neg", "#contrast-target", "#contrast-top", "#contrast-patch",
                    "#contrast-run"):
            w = dialog.query_one(wid)
            assert w.region.area and dialog.region.contains_region(w.region), wid


def _view(tokens_probs, patched_probs) -> LogitsView:
    base = tuple(LogitRow(t, i, b, p) for i, (t, b, p) in enumerate(tokens_probs))
    pat = tuple(LogitRow(t, i + 100, b, p) for i, (t, b, p) in enumerate(patched_probs))
    return LogitsView(prompt="x", base_top=base, patched_top=pat, kl=0.1, model_ms=1.0, n_on=1)


def _bar_cells(line: str) -> int:
    """A bar's length in eighths of a cell."""
    return sum(8 if c == "█" else " ▏▎▍▌▋▊▉".index(c) for c in line if c in "█▏▎▍▌▋▊▉")


# 3 + 13 — one scale for both columns; whole tokens in the token column
@pytest.mark.parametrize("size", [(80, 24), (120, 36), (200, 60)])
async def test_logit_bars_share_one_scale_and_show_whole_tokens(demo_app, size):
    app = demo_app
    long = ("<|endoftext|>", "␣ACCEPTED", "␣Return")
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        await pilot.press("3")
        bars = app.query_one(LogitBars)
        bars.show(_view([(long[0], 0.310, 0.1), (long[1], 0.2, 0.2), (long[2], 0.1, 0.1)],
                        [("b", 0.1, 0.356), ("c", 0.1, 0.2)]))
        await pilot.pause()
        lines = bars.render().plain.splitlines()
        left, right = lines[1].split("│")
        assert _bar_cells(right) > _bar_cells(left)  # 0.356 drawn longer than 0.310
        r2l, r2r = lines[2].split("│")
        assert _bar_cells(r2l) == _bar_cells(r2r)  # 0.2 and 0.2: the same length
        text = screen_text(app)
        for t in long:
            assert t in text, (t, size)


# 4 — contrast scores with significant digits, and what the found set does
async def test_contrast_shows_significant_scores_and_the_sets_effect(demo_app, ui_demo):
    app = demo_app
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await pilot.pause()
        assert app.screen.query_one("#contrast-target").value  # the demo pre-fills its target
        app.screen.query_one("#contrast-top").value = "3"
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.contrast_effect is not None, timeout=240)
        await settle(pilot)
        note = next(n.message for n in app._notifications if n.message.startswith("contrast:"))
        assert "(0.00)" not in note
        assert f"P('{ui_demo.target}') on A" in app.contrast_effect and "→" in app.contrast_effect
        assert "clean KL on B" in app.contrast_effect
        shown = app.query_one("#contrast-effect")  # under the patch list, after the toast is gone
        assert shown.region.area and app.contrast_effect in str(shown.render())
        assert "last contrast search: editing" in screen_text(app)
        # issue 17: each found feature's side (trigger/prediction) and the Pareto front of P vs clean KL
        assert "T trigger-side, P prediction-side" in app.contrast_effect and "Pareto P@KL" in app.contrast_effect


# 5 — each pane says which model state it reflects; provenance defaults to the unpatched model
async def test_provenance_and_contexts_say_which_model_they_reflect(demo_app):
    app = demo_app
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        prov, ctx = app.query_one(ProvenanceView), app.query_one(Contexts)
        assert "unpatched" in ctx.border_title and "unpatched" in prov.border_title
        await pilot.press("space")  # trigger patch on: provenance stays on the unpatched model
        await settle(pilot)
        assert "unpatched" in prov.border_title
        await pilot.press("v")
        await settle(pilot)
        assert prov.border_title == "Provenance · with 1 patch on"
        await pilot.press("v")
        await settle(pilot)
        assert "unpatched" in prov.border_title


# 6 — a provenance message wraps to its pane; a prompt reaches the token embeddings below layer 0
async def test_provenance_messages_wrap_and_reach_the_embeddings(demo_app, ui_demo):
    app = demo_app
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("2")
        view = app.query_one(ProvenanceView)
        view.show("no SAE upstream of layer 1: " + "word " * 30 + "(attach an SAE for layer 0)", message=True)
        await pilot.pause()
        assert "(attach an SAE for layer 0)" in screen_text(app).replace("│", " ")
    text = app.lab.provenance_text(min(ui_demo.layers), 0, ui_demo.prompt)
    assert "emb@" in text or "L" in text.splitlines()[0]


# 8 — long actions: a busy state with progress, Esc cancels; m keeps the LoRA; b says what it does
async def test_lora_fit_is_busy_cancellable_and_kept_for_m(demo_app, demo_session):
    from patch_fixtures import FAST_FIT

    app = demo_app
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        seen: list[str] = []
        app.status.watch_busy = lambda text: seen.append(text)  # every busy line the status bar got
        await pilot.press("b")  # the full fit (~25 s): Esc comes long before it ends
        assert app.busy and "fitting" in app.status.line()  # at once, before the fit reports
        await until(pilot, lambda: any("Esc cancels" in t for t in seen))  # progress from the callback
        await pilot.press("escape")
        assert app.busy is None or "cancelling" in app.status.line()  # the fit stops at its next step
        await until(pilot, lambda: app.busy is None, timeout=30)
        await settle(pilot)
        assert "fitting" not in app.status.line()
        assert demo_session.patch("trigger").method == "hook"  # cancelled: the patch as it was
        assert any("cancelled" in n.message for n in app._notifications)

        demo_session.fit = FAST_FIT
        await pilot.press("b")
        await settle(pilot)
        assert demo_session.patch("trigger").method == "lora"
        assert any("now runs as the LoRA" in n.message for n in app._notifications)
        await pilot.press("b")  # already a LoRA: a warning, not "fitting…" then an error
        await settle(pilot)
        assert not [n for n in app._notifications if n.severity == "error"]
        fid = demo_session.patch("trigger").fidelity
        await pilot.press("m")
        await settle(pilot)
        assert demo_session.patch("trigger").method == "hook"
        await pilot.press("m")  # back to the LoRA: kept, no refit, no busy state
        assert app.busy is None
        await settle(pilot)
        p = demo_session.patch("trigger")
        assert p.method == "lora" and p.fidelity == pytest.approx(fid)


# 9 + 10 — a layer opens on its top row (or its last feature); sort and filter select the top row
async def test_layers_sorts_and_filters_open_at_the_top(demo_app, ui_demo):
    app = demo_app
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        table = app.table
        await pilot.press("down", "down", "down")
        await settle(pilot)
        kept = table.selected
        if len(ui_demo.layers) > 1:
            await pilot.press("l")
            await settle(pilot)
            assert table.selected == table.shown[0]
            for _ in ui_demo.layers[1:]:
                await pilot.press("l")
                await settle(pilot)
            assert app.layer == ui_demo.trigger_layer and table.selected == kept
        await pilot.press("end", "s")
        await settle(pilot)
        assert table.selected == table.shown[0] and table.body.scroll_offset.y == 0
        assert app.query_one(Contexts).detail.feature == table.selected
        await pilot.press("end", "slash")
        await type_text(pilot, "d>0.001")
        await pilot.pause()
        assert table.selected == table.shown[0] and table.body.scroll_offset.y == 0


# 11 — a bad search term says why, under the box
async def test_an_invalid_search_term_shows_its_error(demo_app):
    app = demo_app
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("slash")
        await type_text(pilot, "d:0.1..abc")
        await pilot.pause()
        err = app.query_one("#search-error")
        assert err.display and "not a number" in str(err.render())
        assert "not a number" in screen_text(app)
        app.query_one("#search").value = "d:0.1..0.5"
        await pilot.pause()
        assert not err.display


# 12 — the footer keeps ? and q, drops the least important first
@pytest.mark.parametrize("width", [80, 120, 200])
async def test_the_footer_always_shows_help_and_quit(demo_app, width):
    app = demo_app
    async with app.run_test(size=(width, 30)) as pilot:
        await settle(pilot)
        line = screen_text(app).splitlines()[-1]
        assert "? Help" in line and "q Quit" in line and "space Toggle" in line
        assert len(line.rstrip()) <= width
    ids = [e[0] for e in fit(60)]
    assert "help" in ids and "quit" in ids and "export-patch" not in ids
