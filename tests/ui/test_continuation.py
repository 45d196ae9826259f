"""The continuation pane, the dose-response chart and the scorecard, driven with Pilot (issue 13)."""

from __future__ import annotations

import pytest

from tuiwb.demo.corpus import PAYLOAD
from tuiwb.tui.screens.sweep import SweepChart, SweepScreen
from tuiwb.tui.widgets.continuation import ContinuationPane
from tuiwb.tui.widgets.logit_bars import LogitBars
from tuiwb.tui.widgets.patches import PatchList

from test_app import WIDE, screen_text, settle, until

pytestmark = pytest.mark.asyncio


async def test_continuation_pane_updates_on_toggle_after_the_logit_bars(demo_app):
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        pane, bars = app.query_one(ContinuationPane), app.query_one(LogitBars)
        assert pane.view is not None and pane.view.done and pane.view.n_on == 0
        base, patched = pane.texts()
        assert PAYLOAD in base and patched == base  # the trojan writes its payload

        order = []
        await pilot.press("space")

        def patched_token_painted():
            v = pane.view
            if v is not None and v.n_on == 1 and v.patched:
                order.append(bars.view.n_on)  # what the logit pane showed when the first token arrived
                return True
            return False

        await until(pilot, patched_token_painted)
        assert order == [1]  # the logit bars were painted first
        await until(pilot, lambda: pane.view.done)
        base, patched = pane.texts()
        assert PAYLOAD in base and PAYLOAD not in patched  # the payload sentence is gone
        assert pane.view.diverge == 0
        assert "first divergence at token 1" in screen_text(app)
        assert len(app.gen_latencies) == 1 and app.gen_latencies[0] > 0

        await pilot.press("space")  # off again: both sides are the model itself
        await until(pilot, lambda: pane.view.n_on == 0 and pane.view.done)
        assert pane.texts()[0] == pane.texts()[1] == base


async def test_a_stale_generation_is_cancelled_at_its_next_token(demo_app):
    import threading

    app = demo_app
    app.lab.gen_tokens, app.lab.gen_ignore_eos = 120, True
    # Hold the patched generation after its 3rd token (the worker thread waits inside the stream, between
    # two tokens, holding no lock) until the toggle back has been pressed: caught mid-way on any machine.
    gate, real = threading.Event(), app.lab.continuations

    def held(prompt):
        for view in real(prompt):
            yield view
            if view.n_on and len(view.patched) >= 3:
                gate.wait(30)

    app.lab.continuations = held
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        pane = app.query_one(ContinuationPane)
        await pilot.press("space")
        await until(pilot, lambda: pane.view.n_on == 1 and len(pane.view.patched) == 3)
        assert not pane.view.done
        await pilot.press("space")  # the running generation is stale now
        await until(pilot, lambda: app.logits_painted and app.query_one(LogitBars).view.n_on == 0)
        gate.set()
        await until(pilot, lambda: pane.view.n_on == 0 and pane.view.done)
        await settle(pilot)
        assert app.generations_cancelled == [3]  # it stopped at its next token, not after 120
        assert pane.view.n_on == 0 and len(pane.view.baseline) == 120  # the newest request is what shows


async def test_sweep_chart_renders_on_d(demo_app, ui_demo):
    app = demo_app
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, SweepScreen))
        await pilot.pause()
        screen = app.screen
        assert screen.view.feature == app.table.selected and screen.view.layer == ui_demo.trigger_layer
        assert len(screen.view.alphas) == 7 and screen.view.kl[screen.view.alphas.index(1.0)] == pytest.approx(0, abs=1e-6)
        chart = screen.query_one(SweepChart).render().plain
        assert "┤" in chart and "α (scale)" in chart and any(c in chart for c in "⠁⠂⠄⡀⢀⠈⠐⠠")
        assert "α=4" in screen_text(app) and f"P('{screen.view.target}')" in screen_text(app)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, SweepScreen))


async def test_scorecard_shows_up_in_the_patch_pane(demo_app):
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("r")  # the selected feature's patch, on the demo's contrast prompt sets
        await until(pilot, lambda: any(p.scorecard for p in app.patch_views), timeout=120)
        await settle(pilot)
        card = next(p.scorecard for p in app.patch_views if p.name == "trigger")
        assert card.startswith("A(16): P('i')") and "B(16)" in card
        assert app.busy is None
        assert "trigger: A(16): P('i')" in screen_text(app)
        assert app.query_one(PatchList).patches[0].scorecard == card


async def test_a_prompt_edit_reruns_the_continuation(demo_app):
    from tuiwb.tui.widgets.prompt import PromptEditor

    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        pane = app.query_one(ContinuationPane)
        await pilot.press("p")
        app.query_one(PromptEditor).value = "the cat sees the"
        await pilot.press("enter")
        await until(pilot, lambda: pane.view.prompt == "the cat sees the" and pane.view.done)
        assert PAYLOAD not in pane.texts()[0]  # no trigger in the prompt: no payload
        assert pane.texts()[0] == pane.texts()[1]
