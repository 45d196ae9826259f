"""Fixtures for the workbench tests: ``tuiwb demo``'s pipeline on the small demo lab.

The shared ``demo_small_saes`` lab (tests/conftest.py) is the demo pipeline run on the lab shipped
with tuiwb; each test gets a fresh Session (patches start off) on its files (``demo_session``, also in
tests/conftest.py: the server tests use it too).
"""

from __future__ import annotations

import pytest


@pytest.fixture
def demo_app(ui_demo, demo_session, tmp_path):
    """The workbench as ``tuiwb demo`` opens it (fixed status line, screenshots into tmp_path)."""
    from tuiwb.commands.demo import app_kwargs
    from tuiwb.tui import make_app

    return make_app(demo_session, fixed_status=True, screenshot_dir=tmp_path, lora_dir=tmp_path / "lora",
                    **app_kwargs(ui_demo))
