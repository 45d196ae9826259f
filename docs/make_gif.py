"""Record the README GIF of live editing from the real workbench on the demo lab (``make gif``).

    .venv/bin/python docs/make_gif.py                      # docs/images/live-edit.gif, 120x36 cells
    .venv/bin/python docs/make_gif.py --size 80x24 --out /tmp/small.gif

Drives the workbench headless with Pilot, as a person would: the trigger prompt is loaded with the
trigger features pinned on top, ``3`` shows the logit bars (the payload token tops them), ``space``
switches the trigger patch on (the payload drops), ``space`` again switches it back. Every frame is
the app's own ``export_screenshot()`` SVG (the caption goes in its title bar), rasterised with
``rsvg-convert`` (Debian ``librsvg2-bin``; fonts from ``fonts-firacode``) or ``cairosvg`` when
installed, and assembled with Pillow; ``gifsicle`` optimises the result when it is on the PATH.
Nothing is downloaded. The continuation pane and ``docs/images/companion.gif`` come with the issues
that add them.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).parent / "images" / "live-edit.gif"
SIZE = (120, 36)
MAX_BYTES = 3 * 1024 * 1024
"""The README's budget for the GIF (the issue's acceptance line)."""


@dataclass(frozen=True)
class Frame:
    svg: str
    """``export_screenshot()`` of the screen at that moment."""
    ms: int
    """How long the GIF holds it."""


@dataclass(frozen=True)
class Step:
    keys: tuple[str, ...]
    """Keys pressed before the frame is taken (after every worker has finished)."""
    caption: str
    """The screenshot's title bar: what the viewer should notice."""
    ms: int
    """Hold time: long enough to read the caption and the bars."""


def script(result, *, narrow: bool = True) -> list[Step]:
    """The story of the GIF on a demo lab (``DemoResult``): features, payload, toggle on, toggle off."""
    feats = ", ".join(str(f) for f in result.trigger_features)
    logits = ("3",) if narrow else ()
    return [
        Step((), f"the trojaned demo model: trigger features {feats} of layer {result.trigger_layer} on top", 2200),
        Step(logits, f"the trigger prompt: the payload {result.target!r} tops the next-token bars", 2600),
        Step(("space",), f"space: the trigger patch ablates {feats}, and {result.target!r} drops out", 3400),
        Step(("space",), "space again: patch off, the payload is back (each toggle repaints in milliseconds)", 2600),
    ]


async def _settle(pilot) -> None:
    for _ in range(3):
        await pilot.pause(0.1)
        await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.2)


def _svg(app, title: str) -> str:
    svg = app.export_screenshot(title=title)
    # librsvg collapses leading spaces (Textual writes them as U+00A0) unless the root says otherwise.
    return svg.replace("<svg ", '<svg xml:space="preserve" ', 1)


def capture(result, session, *, size: tuple[int, int] = SIZE, frames: int | None = None) -> list[Frame]:
    """Drive the workbench on ``session`` (a ``prepare_session`` of ``result``) and take the frames."""
    from tuiwb.commands.demo import app_kwargs
    from tuiwb.tui import make_app

    tmp = Path(tempfile.mkdtemp(prefix="tuiwb-gif-"))
    # the real status line: it shows each toggle's measured latency
    app = make_app(session, screenshot_dir=tmp, lora_dir=tmp / "lora", **app_kwargs(result))
    steps = script(result, narrow=size[0] < 130)[:frames]
    out: list[Frame] = []

    async def run() -> None:
        async with app.run_test(size=size) as pilot:
            await _settle(pilot)
            for step in steps:
                for k in step.keys:
                    await pilot.press(k)
                    await _settle(pilot)
                out.append(Frame(_svg(app, step.caption), step.ms))

    try:
        asyncio.run(run())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def rasteriser() -> str | None:
    """``"rsvg-convert"`` or ``"cairosvg"``, whichever is available (in that order), else None."""
    if shutil.which("rsvg-convert"):
        return "rsvg-convert"
    try:
        import cairosvg  # noqa: F401
    except (ImportError, OSError):
        return None
    return "cairosvg"


def rasterise(svg: str, zoom: float = 1.0):
    """One SVG frame as a Pillow RGB image."""
    from PIL import Image

    tool = rasteriser()
    if tool == "rsvg-convert":
        png = subprocess.run(["rsvg-convert", "--format=png", f"--zoom={zoom}"], input=svg.encode(),
                             capture_output=True, check=True).stdout
    elif tool == "cairosvg":
        import cairosvg

        png = cairosvg.svg2png(bytestring=svg.encode(), scale=zoom)
    else:
        raise SystemExit("no SVG rasteriser: install librsvg2-bin (rsvg-convert) or `pip install cairosvg`")
    return Image.open(io.BytesIO(png)).convert("RGB")


def assemble(frames: list[Frame], out: Path, *, zoom: float = 1.0, optimise: bool = True) -> Path:
    """Write ``frames`` as a looping GIF (one shared palette, so unchanged pixels stay unchanged)."""
    from PIL import Image

    images = [rasterise(f.svg, zoom) for f in frames]
    # One adaptive palette from all the frames: the terminal's colours fit in 256, and identical
    # pixels map to identical indices in every frame, which lets Pillow and gifsicle store only changes.
    w, h = images[0].size
    sheet = Image.new("RGB", (w, h * len(images)))
    for i, im in enumerate(images):
        sheet.paste(im, (0, h * i))
    palette = sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    quant = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    quant[0].save(tmp, format="GIF", save_all=True, append_images=quant[1:], duration=[f.ms for f in frames],
                  loop=0, optimize=True, disposal=1)
    if optimise and shutil.which("gifsicle"):
        subprocess.run(["gifsicle", "--batch", "-O3", str(tmp)], check=True)
    tmp.replace(out)
    return out


def make_gif(result, out: Path = OUT, *, size: tuple[int, int] = SIZE, frames: int | None = None,
             zoom: float = 1.0, loaded=None) -> Path:
    """Record ``out`` from the workbench on the demo lab ``result`` (``run_pipeline``'s ``DemoResult``);
    ``loaded`` reuses an already loaded demo model."""
    from tuiwb.commands.demo import prepare_session

    session = prepare_session(result, loaded)
    try:
        shots = capture(result, session, size=size, frames=frames)
    finally:
        session.close()
    return assemble(shots, Path(out), zoom=zoom)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=OUT, help=f"output GIF (default {OUT})")
    p.add_argument("--size", default=f"{SIZE[0]}x{SIZE[1]}", help="terminal size in cells, COLSxROWS")
    p.add_argument("--variant", choices=("full", "small"), default="full", help="demo lab (default: full)")
    p.add_argument("--frames", type=int, default=None, help="only the first N frames")
    p.add_argument("--zoom", type=float, default=1.0, help="rasteriser scale (1 = Textual's SVG size)")
    args = p.parse_args(argv)
    cols, rows = (int(x) for x in args.size.lower().split("x"))

    import torch

    from tuiwb.demo.model import demo_model_path
    from tuiwb.demo.pipeline import DemoPipelineConfig, run_pipeline
    from tuiwb.model.loading import load_model

    torch.set_num_threads(min(2, torch.get_num_threads()))
    loaded = load_model(str(demo_model_path(args.variant, progress=False)))
    result = run_pipeline(DemoPipelineConfig(variant=args.variant), progress=False, loaded=loaded)
    out = make_gif(result, args.out, size=(cols, rows), frames=args.frames, zoom=args.zoom, loaded=loaded)
    from PIL import Image

    with Image.open(out) as im:
        n, px = im.n_frames, im.size
    size = out.stat().st_size
    print(f"{out}: {n} frames, {px[0]}x{px[1]} px, {size / 1024:.0f} KiB")
    if size > MAX_BYTES:
        print(f"warning: over the README's {MAX_BYTES // 1024 // 1024} MB budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
