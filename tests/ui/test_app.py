"""The workbench driven headless with Pilot on the small demo model (real Session, real SAEs)."""

from __future__ import annotations

import pytest
from pilot_wait import until

from tuiwb.tui.keymap import KEYS
from tuiwb.tui.screens.contrast import ContrastDialog
from tuiwb.tui.screens.help import HelpScreen
from tuiwb.tui.widgets.contexts import Contexts
from tuiwb.tui.widgets.feature_table import FeatureRowsView
from tuiwb.tui.widgets.logit_bars import LogitBars
from tuiwb.tui.widgets.patches import PatchList
from tuiwb.tui.widgets.prompt import PromptEditor
from tuiwb.tui.widgets.provenance import ProvenanceView
from tuiwb.tui.widgets.token_cloud import TokenCloud

pytestmark = pytest.mark.asyncio

WIDE = (160, 50)


async def settle(pilot, rounds: int = 3) -> None:
    """Let debounced requests start and every worker finish, then repaint."""
    for _ in range(rounds):
        await pilot.pause(0.1)
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()




def screen_text(app) -> str:
    """What the terminal shows, as plain text (one line per row)."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in strip) for strip in strips)


async def type_text(pilot, text: str) -> None:
    await pilot.press(*[("space" if c == " " else c) for c in text])


async def test_toggle_changes_logits_and_toggling_back_restores_them(demo_app, demo_session, ui_demo):
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        bars = app.query_one(LogitBars)
        before = bars.view
        assert before is not None and before.n_on == 0 and before.kl == 0
        # the trojan is visible: the payload's first token tops the bars for the preloaded prompt
        assert before.base_top[0].token.strip() == ui_demo.target
        assert [r.patched for r in before.base_top] == [r.base for r in before.base_top]
        # the cursor starts on the top trigger feature, whose patch is the prepared "trigger" patch
        assert app.table.selected == ui_demo.trigger_features[0]

        painted = app.logits_painted
        await pilot.press("space")
        await until(pilot, lambda: app.logits_painted > painted and bars.view.n_on == 1)
        after = bars.view
        assert demo_session.patch("trigger").enabled
        assert after.kl > 0
        payload = after.base_top[0]
        assert payload.base == pytest.approx(before.base_top[0].base)
        assert payload.patched < payload.base  # ablating the trigger features pushes the payload down ...
        assert after.patched_top[0].token.strip() != ui_demo.target  # ... off the top
        assert f"{after.patched_top[0].patched:.3f}" in bars.render().plain  # the pane shows the new numbers
        assert len(app.latencies) == 1 and app.latencies[0] > 0

        painted = app.logits_painted
        await pilot.press("space")
        await until(pilot, lambda: app.logits_painted > painted and bars.view.n_on == 0)
        restored = bars.view
        assert not demo_session.patch("trigger").enabled
        assert [(r.token, r.patched) for r in restored.patched_top] == [(r.token, r.patched) for r in before.patched_top]
        assert restored.kl == 0
        assert len(app.latencies) == 2


async def test_rapid_toggles_end_in_the_last_requested_state(demo_app, demo_session):
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        bars = app.query_one(LogitBars)
        base = bars.view
        await pilot.press(*["space"] * 5)  # no waiting: requests supersede each other
        await settle(pilot)
        assert app.wanted["trigger"] and demo_session.patch("trigger").enabled
        assert bars.view.n_on == 1 and bars.view.kl > 0
        await pilot.press(*["space"] * 3)
        await settle(pilot)
        assert not app.wanted["trigger"] and not demo_session.patch("trigger").enabled
        assert bars.view.n_on == 0 and bars.view.kl == 0
        assert [r.patched for r in bars.view.patched_top] == [r.patched for r in base.patched_top]


async def test_space_on_a_feature_without_patch_creates_an_ablation_patch(demo_app, demo_session, ui_demo):
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        rows = app.query_one(FeatureRowsView)
        # move to the first feature that is not in the trigger patch
        while app.table.selected in ui_demo.trigger_features:
            await pilot.press("down")
        f = app.table.selected
        await settle(pilot)
        await pilot.press("space")
        await until(pilot, lambda: any(p.name == f"L{ui_demo.trigger_layer}-f{f}" for p in demo_session.patches))
        await settle(pilot)
        p = demo_session.patch(f"L{ui_demo.trigger_layer}-f{f}")
        assert p.enabled and p.features == [f] and p.mode == "ablate" and p.method == "hook"
        assert rows.marks.get(f) == "on"
        assert app.query_one(PatchList).row_count == len(demo_session.patches) == 2


async def test_search_filters_the_feature_table(demo_app, ui_demo):
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        table = app.table
        n = len(table.rows)
        assert len(table.shown) == n
        await pilot.press("slash")
        assert app.focused.id == "search"
        await type_text(pilot, "#5")
        await pilot.pause()
        assert table.shown == [5]
        await pilot.press("escape")
        await pilot.pause()
        assert len(table.shown) == n and not table.has_class("-searching")

        # a word keeps exactly the features whose top tokens contain it
        word = next(t for t in table.rows.top_tokens if t).split(", ")[0]
        await pilot.press("slash")
        await type_text(pilot, word)
        await pilot.pause()
        shown = table.shown
        assert 0 < len(shown) < n
        assert all(word.lower() in table.rows.top_lower[f] for f in shown)
        await pilot.press("enter")  # keeps the filter, back to the rows
        assert isinstance(app.focused, FeatureRowsView)
        assert table.shown == shown

        await pilot.press("slash")
        app.query_one("#search").value = ""
        await type_text(pilot, "d>0.01")
        await pilot.pause()
        assert table.shown and all(table.rows.density[f] >= 0.01 for f in table.shown)


async def test_selecting_a_feature_updates_cloud_contexts_and_provenance(demo_app, ui_demo):
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        cloud, ctx, prov = app.query_one(TokenCloud), app.query_one(Contexts), app.query_one(ProvenanceView)
        # provenance needs an SAE upstream: go to the last layer
        while app.layer != max(ui_demo.layers):
            await pilot.press("l")
            await settle(pilot)
        layer = app.layer
        assert app.table.rows.layer == layer
        first = app.table.selected
        first_prov = prov.text
        assert ctx.detail.feature == first and ctx.detail.layer == layer
        await pilot.press("down")
        await settle(pilot)
        f = app.table.selected
        assert f != first
        stats = app.lab.stats(layer)
        assert [t for t, _ in cloud.tokens] == [t.token for t in stats.top_tokens(f, len(cloud.tokens))]
        assert ctx.detail.feature == f and ctx.detail.contexts  # top contexts from the activation store
        assert ctx.detail.prompt is not None and len(ctx.detail.prompt.tokens) > 3
        assert prov.border_subtitle == f"L{layer} f{f}", [n.message for n in app._notifications]
        assert f"L{layer}/F{f}" in prov.text.splitlines()[0]  # the tree's root is the selected feature
        assert f"L{layer - 1}/" in prov.text  # ... attributed to the layer below
        assert prov.text != first_prov


async def test_token_cursor_highlights_the_token_in_the_contexts(demo_app):
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        cloud, ctx = app.query_one(TokenCloud), app.query_one(Contexts)
        assert cloud.tokens
        await pilot.press("2")  # focus the token cloud
        assert app.focused is cloud
        await pilot.press("right")
        assert ctx.highlight == cloud.tokens[0][0]
        await pilot.press("right")
        assert ctx.highlight == cloud.tokens[1 % len(cloud.tokens)][0]
        await pilot.press("escape")
        assert ctx.highlight is None
        # the mouse does the same: hovering the first token (inside the border and padding)
        await pilot.hover(TokenCloud, offset=(3, 1))
        await pilot.pause()
        assert ctx.highlight == cloud.tokens[0][0]


async def test_pane_colours_follow_the_theme(demo_app):
    """The panes draw with component classes styled by theme variables: a new theme repaints them."""
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)

        def colours():
            bars = app.query_one(LogitBars).render()
            shading = app.query_one("#contexts-body").content  # baked into the body's Text
            return {s.style.color for s in bars.spans}, {s.style.bgcolor for s in shading.spans}

        dark = colours()
        app.theme = "textual-light"
        await settle(pilot, rounds=1)
        light = colours()
        assert dark[0] != light[0] and dark[1] != light[1]


async def test_a_model_error_becomes_a_notification_and_the_app_survives(demo_app):
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        editor = app.query_one(PromptEditor)
        await pilot.press("p")
        assert app.focused is editor
        editor.value = "the cat runs . " * 200  # longer than the model's context (a paste)
        await pilot.press("enter")
        await settle(pilot)
        errors = [n for n in app._notifications if n.severity == "error"]
        assert errors and any("context" in n.message for n in errors)
        assert app.is_running
        painted = app.logits_painted
        editor.value = "the cat sees the"
        await pilot.press("enter")
        await until(pilot, lambda: app.logits_painted > painted)
        assert app.query_one(LogitBars).view.prompt == "the cat sees the"


@pytest.mark.parametrize("size", [(80, 24), (160, 50)])
async def test_layouts_render_at_80x24_and_160x50(demo_app, size):
    app = demo_app
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        pages = ["features-pane", "detail-pane", "logits-pane", "patches-pane"]
        regions = {p: app.query_one(f"#{p}").region for p in pages}
        screen = app.screen.region
        if size == (80, 24):
            assert app.screen.has_class("-narrow")
            assert app.query_one("#pages").display
            assert [p for p in pages if regions[p].area] == ["features-pane"]
            for n, p in enumerate(pages, start=1):
                await pilot.press(str(n))
                await pilot.pause()
                shown = [q for q in pages if app.query_one(f"#{q}").region.area]
                assert shown == [p]
                assert screen.contains_region(app.query_one(f"#{p}").region)
            bars = app.query_one(LogitBars)
            await pilot.press("3")
            await pilot.pause()
            assert bars.region.area and screen.contains_region(bars.region)
        else:
            assert app.screen.has_class("-wide")
            assert not app.query_one("#pages").display
            for p in pages:
                assert regions[p].area > 0 and screen.contains_region(regions[p])
            for i, a in enumerate(pages):
                for b in pages[i + 1:]:
                    assert not regions[a].overlaps(regions[b])
        assert app.query_one("#status").region.area > 0


async def test_every_action_has_a_binding_a_palette_entry_and_a_help_line(demo_app):
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        ids = {b.id for b in app.BINDINGS}
        palette = {c.title for c in app.get_system_commands(app.screen)}
        for k in KEYS:
            assert k.id in ids
            assert k.title in palette
            assert hasattr(app, f"action_{k.action.split('(')[0]}")
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        for k in KEYS:
            assert k.title in text, k.title
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_command_palette_runs_an_action(demo_app):
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        sort = app.table.sort
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await type_text(pilot, "Sort")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await settle(pilot)
        assert app.table.sort != sort


async def test_ctrl_s_saves_an_svg_screenshot(demo_app, tmp_path):
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+s")
        await pilot.pause()
        files = list(tmp_path.glob("*.svg"))
        assert len(files) == 1 and files[0].read_text().lstrip().startswith("<svg")


async def test_mode_key_cycles_the_patch_mode(demo_app, demo_session):
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("space")  # trigger patch on
        await settle(pilot)
        await pilot.press("a")
        await settle(pilot)
        p = demo_session.patch("trigger")
        assert p.mode == "scale=0.5" and p.enabled  # mode changed, still on
        assert app.query_one(LogitBars).view.n_on == 1
        await pilot.press("a")
        await settle(pilot)
        assert demo_session.patch("trigger").mode == "scale=2"


async def test_lora_keys_build_switch_and_export(demo_app, demo_session, ui_demo, tmp_path):
    from patch_fixtures import FAST_FIT

    demo_session.fit = FAST_FIT  # a quick fit: this test checks the wiring, not the fit's quality
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("b")
        await settle(pilot)
        p = demo_session.patch("trigger")
        assert p.method == "lora" and p.fidelity is not None
        await until(pilot, lambda: "lora" in app.query_one(PatchList).get_row("trigger")[5])
        await pilot.press("m")  # back to the exact hook
        await settle(pilot)
        assert demo_session.patch("trigger").method == "hook"
        await pilot.press("e")  # export fits the LoRA again and writes lora/trigger
        await settle(pilot)
        assert (tmp_path / "lora" / "trigger" / "manifest.json").is_file()
        assert (tmp_path / "lora" / "trigger" / "adapter_model.safetensors").is_file()

    # what `tuiwb ui --lora lora/` attaches: every patch below the directory, switched on
    from tuiwb.commands.ui import lora_dirs
    from tuiwb.model.loading import load_model
    from tuiwb.session.session import Session

    assert lora_dirs([str(tmp_path / "lora")]) == [tmp_path / "lora" / "trigger"]
    fresh = Session(load_model(str(ui_demo.model_dir)), demo_session.saes)
    try:
        p = fresh.attach_lora(tmp_path / "lora" / "trigger")
        assert p.method == "lora" and p.enabled and p.features == demo_session.patch("trigger").features
    finally:
        fresh.close()


async def test_contrast_search_ranks_features_and_makes_a_patch(demo_app, demo_session, ui_demo):
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ContrastDialog)
        app.screen.query_one("#contrast-target").value = ""  # activation contrast (fast)
        app.screen.query_one("#contrast-top").value = "5"
        await pilot.press("ctrl+r")
        await settle(pilot, rounds=4)
        layer = ui_demo.trigger_layer
        ranked = app.ranked[layer]
        assert len(ranked) == 5
        assert app.table.shown[:5] == list(ranked)
        p = demo_session.patch(f"contrast-L{layer}")
        assert p.features == list(ranked) and not p.enabled


async def test_without_activations_the_table_uses_cached_stats_and_says_why_contexts_are_missing(ui_demo):
    from tuiwb.model.loading import load_model
    from tuiwb.sae.io import load_saes
    from tuiwb.session.session import Session
    from tuiwb.tui import make_app

    # No --acts: the stats come from features.npz next to each SAE (load_saes records the directory).
    session = Session(load_model(str(ui_demo.model_dir)), load_saes(ui_demo.saes_dir))
    app = make_app(session, prompt=ui_demo.prompt, layer=ui_demo.trigger_layer)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        assert not [n for n in app._notifications if n.severity == "error"]
        rows = app.table.rows
        assert rows is not None and len(rows) == session.sae(ui_demo.trigger_layer).d_sae
        assert any(rows.top_tokens) and (rows.density > 0).any()  # from features.npz next to the SAE
        ctx = app.query_one(Contexts)
        assert not ctx.detail.contexts and "--acts" in ctx.detail.note
        assert ctx.detail.prompt is not None  # the prompt's own activations need no store


async def test_the_feature_table_handles_16k_rows(demo_app):
    import numpy as np

    from tuiwb.session.views import FeatureRows

    n = 16_384
    rng = np.random.default_rng(0)
    rows = FeatureRows(layer=demo_app.layer, ids=np.arange(n), density=rng.random(n) * 0.2,
                       max_act=rng.random(n) * 10, top_tokens=tuple(f"tok{i % 97}, the" for i in range(n)))
    app = demo_app
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        app.table.load(rows, ranked=())
        await pilot.pause()
        body = app.query_one(FeatureRowsView)
        body.focus()
        assert len(app.table.shown) == n
        await pilot.press("end")
        assert app.table.selected == app.table.shown[-1]
        assert body.scroll_offset.y >= n - body.size.height  # scrolled to the bottom, rows painted lazily
        await pilot.press("home", "pagedown")
        assert app.table.shown.index(app.table.selected) == body.size.height - 1
        await pilot.press("slash")
        await type_text(pilot, "#16000")
        await pilot.pause()
        assert app.table.shown == [16000]
        await pilot.press("escape")
        await pilot.press("s")  # density ↑: the least dense feature first
        assert app.table.shown[0] == int(np.argmin(rows.density))
