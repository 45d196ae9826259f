"""Regenerate the workbench screenshots in docs/images/ from the real app on the full demo.

    .venv/bin/python docs/tui_screenshots.py

Runs ``tuiwb demo``'s pipeline (cached after the first run), opens the app headless and saves SVGs
with the app's own screenshot function (the same as ``ctrl+s``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

OUT = Path(__file__).parent / "images"


async def _settle(pilot) -> None:
    for _ in range(3):
        await pilot.pause(0.2)
        await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.3)


def shoot(name: str, size: tuple[int, int], keys: list[str]) -> Path:
    from tuiwb.commands.demo import app_kwargs, prepare_session
    from tuiwb.demo.pipeline import DemoPipelineConfig, run_pipeline
    from tuiwb.tui import make_app

    result = run_pipeline(DemoPipelineConfig(variant="full"), progress=False, say=lambda s: None)
    app = make_app(prepare_session(result), **app_kwargs(result))

    async def run() -> None:
        async with app.run_test(size=size) as pilot:
            await _settle(pilot)
            for k in keys:
                await pilot.press(k)
                await _settle(pilot)
            app.save_screenshot(filename=f"{name}.svg", path=str(OUT))

    asyncio.run(run())
    return OUT / f"{name}.svg"


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    print(shoot("workbench", (160, 50), []))
    print(shoot("workbench-patched", (160, 50), ["space"]))
    print(shoot("workbench-80x24", (80, 24), ["space", "3"]))
    print(shoot("workbench-continuation-80x24", (80, 24), ["space", "5"]))
    print(shoot("workbench-sweep", (120, 40), ["d"]))
    print(shoot("help", (110, 44), ["question_mark"]))
