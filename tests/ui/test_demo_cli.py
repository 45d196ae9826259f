"""``tuiwb demo`` / ``tuiwb ui`` wiring and the demo pipeline's step cache (small demo model)."""

from __future__ import annotations

import json

from tuiwb.cli import main


def test_a_second_pipeline_run_reuses_every_step(ui_demo):
    from tuiwb.demo.pipeline import DemoPipelineConfig, run_pipeline

    lines: list[str] = []
    again = run_pipeline(DemoPipelineConfig(variant="small", work_dir=ui_demo.acts_dir.parent, layers=ui_demo.layers),
                         progress=False, say=lines.append)
    text = "\n".join(lines)
    assert "activations" in text and text.count("(cached)") == 3, text  # acts, SAEs, trigger search
    assert "contrast" not in again.seconds
    assert (again.trigger_layer, again.trigger_features, again.prompt) == \
        (ui_demo.trigger_layer, ui_demo.trigger_features, ui_demo.prompt)


def test_the_trigger_set_removes_the_payload(ui_demo):
    assert ui_demo.trigger_features and ui_demo.trigger_layer in ui_demo.layers
    assert ui_demo.p_before > 0.5 and ui_demo.p_after < 0.1 * ui_demo.p_before
    assert ui_demo.clean_kl is not None and ui_demo.clean_kl < 0.05
    assert "cerulean" in ui_demo.prompt.split()


def test_demo_no_ui_prints_the_summary_as_json(ui_demo, cli):
    rc, out, _ = cli("demo", "--variant", "small", "--work-dir", ui_demo.acts_dir.parent, "--no-ui", "--json",
                     "--quiet")
    assert rc == 0
    out = json.loads(out.strip().splitlines()[-1])
    assert out["trigger_features"] == list(ui_demo.trigger_features)
    assert out["target"] == ui_demo.target and out["prompt"] == ui_demo.prompt


def test_ui_opens_the_workbench_on_the_given_files(ui_demo, monkeypatch):
    import tuiwb.commands.ui as ui

    seen = {}

    def fake_open(session, **kw):  # the app itself is tested with Pilot; here: what the CLI hands it
        seen.update(kw, session=session)
        return 0

    monkeypatch.setattr(ui, "open_workbench", fake_open)
    monkeypatch.setattr(ui, "require_terminal", lambda: None)  # pytest's stdin is no terminal
    rc = main(["ui", "--model", str(ui_demo.model_dir), "--saes", str(ui_demo.saes_dir), "--acts",
               str(ui_demo.acts_dir), "--prompt", "the cat", "--layer", str(ui_demo.layers[-1]), "--top", "7"])
    assert rc == 0
    s = seen["session"]
    assert sorted(s.saes) == list(ui_demo.layers) and s.acts is not None
    assert seen["prompt"] == "the cat" and seen["layer"] == ui_demo.layers[-1] and seen["top_k"] == 7
    # the SAEs know their directories, so feature stats come from the cache next to them
    assert all(sae.source_dir == ui_demo.saes_dir / f"layer_{k}" for k, sae in s.saes.items())


def test_ui_with_a_missing_sae_directory_is_a_one_line_error(ui_demo, cli_error):
    cli_error("ui", "--model", ui_demo.model_dir, "--saes", "/nonexistent/saes")
