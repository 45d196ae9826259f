"""One Session, two clients: a toggle in the workbench reaches the sockets, and a toggle or prompt
sent from a socket shows up in the workbench (``tuiwb ui --companion``)."""

from __future__ import annotations

import asyncio

import pytest
from companion_client import open_ws
from pilot_wait import until

pytestmark = pytest.mark.asyncio


async def _logits(ws) -> dict:
    """The next ``logits`` message (read in a thread: the workbench's loop keeps running)."""
    while True:
        msg = await asyncio.to_thread(ws.receive_json)
        if msg["type"] == "logits":
            return msg


async def test_toggles_and_prompt_cross_between_the_workbench_and_the_page(client, server_session, server_demo,
                                                                         tmp_path):
    from tuiwb.commands.demo import app_kwargs
    from tuiwb.tui import make_app
    from tuiwb.tui.widgets.logit_bars import LogitBars
    from tuiwb.tui.widgets.prompt import PromptEditor

    app = make_app(server_session, fixed_status=True, screenshot_dir=tmp_path, lora_dir=tmp_path / "lora",
                   **app_kwargs(server_demo))
    async with app.run_test(size=(160, 50)) as pilot:
        bars = app.query_one(LogitBars)
        await until(pilot, lambda: app.logits_painted > 0)
        with open_ws(client) as ws:
            me = (await asyncio.to_thread(ws.receive_json))["client"]
            # the workbench toggles (space on the trigger feature, as a user would)
            await pilot.press("space")
            msg = await _logits(ws)
            assert msg["origin"] == "tui" and msg["patches"][0]["on"] is True and msg["kl"] > 0
            # the page toggles it back: the workbench's patch list and bars follow
            painted = app.logits_painted
            ws.send_json({"type": "toggle", "seq": 1, "patch": "trigger", "on": False})
            assert (await _logits(ws))["origin"] == me
            await until(pilot, lambda: app.logits_painted > painted and bars.view.n_on == 0)
            assert app.wanted["trigger"] is False and not server_session.patch("trigger").enabled
            # and the page's prompt becomes the workbench's
            ws.send_json({"type": "prompt", "seq": 2, "text": "the cup"})
            await _logits(ws)
            await until(pilot, lambda: app.query_one(PromptEditor).value == "the cup" and bars.view.prompt == "the cup")
            assert app.prompt == server_session.prompt == "the cup"
