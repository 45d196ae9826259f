"""The Textual workbench (the only package that imports textual): ``make_app(session, prompt)``."""

from tuiwb.tui.app import WorkbenchApp, make_app

__all__ = ["WorkbenchApp", "make_app"]
