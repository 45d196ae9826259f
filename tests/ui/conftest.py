"""Fixtures for the workbench tests: ``tuiwb demo``'s pipeline on the small demo model.

The activations and SAEs come from the shared ``demo_small_saes`` lab (tests/conftest.py), linked
into the pipeline's work directory: the pipeline validates and reuses them (its cache path), then
computes feature stats and runs the trigger search. A lock makes pytest-xdist workers share one
run. Each test gets a fresh Session (patches start off) on those files.
"""

from __future__ import annotations

import contextlib

import pytest


@pytest.fixture(scope="session")
def ui_demo(demo_small_saes, shared_tmp):
    """``DemoResult`` of the demo pipeline (small variant) on the shared lab's acts and SAEs."""
    from tuiwb.demo.pipeline import DemoPipelineConfig, run_pipeline

    work = shared_tmp / "ui-demo-work"
    work.mkdir(exist_ok=True)
    for name, target in (("acts.parquet", demo_small_saes.acts), ("saes", demo_small_saes.saes)):
        with contextlib.suppress(FileExistsError):  # another xdist worker linked it first
            (work / name).symlink_to(target, target_is_directory=True)
    # run_pipeline locks the work directory itself: one worker computes, the others reuse
    cfg = DemoPipelineConfig(variant="small", work_dir=work, layers=demo_small_saes.layers)
    return run_pipeline(cfg, progress=False, say=lambda s: None)


@pytest.fixture
def demo_session(ui_demo):
    """A fresh Session on the demo pipeline's outputs, with the (off) trigger patch."""
    from tuiwb.commands.demo import prepare_session

    session = prepare_session(ui_demo)
    yield session
    session.close()


@pytest.fixture
def demo_app(ui_demo, demo_session, tmp_path):
    """The workbench as ``tuiwb demo`` opens it (fixed status line, screenshots into tmp_path)."""
    from tuiwb.commands.demo import app_kwargs
    from tuiwb.tui import make_app

    return make_app(demo_session, fixed_status=True, screenshot_dir=tmp_path, lora_dir=tmp_path / "lora",
                    **app_kwargs(ui_demo))
