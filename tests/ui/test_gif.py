"""docs/make_gif.py (``make gif``, the README GIF) run for real at a tiny size, so it cannot rot."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "make_gif.py"


def load_script():
    import sys

    spec = importlib.util.spec_from_file_location("make_gif", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_gif"] = mod  # its dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


def test_make_gif_records_a_multi_frame_gif_of_the_toggle(ui_demo, tmp_path):
    from PIL import Image

    gif = load_script()
    if gif.rasteriser() is None:  # .ci/run installs librsvg2-bin; say so rather than fail obscurely
        pytest.skip("no SVG rasteriser (apt-get install librsvg2-bin)")
    out = gif.make_gif(ui_demo, tmp_path / "live-edit.gif", size=(80, 24), frames=3, zoom=0.5)
    assert out == tmp_path / "live-edit.gif" and not list(tmp_path.glob("*.tmp"))
    with Image.open(out) as im:
        assert im.format == "GIF"
        assert im.n_frames == 3
        w, h = im.size
        assert 300 < w < 800 and 150 < h < 500  # 80x24 cells at half scale
        durations, frames = [], []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
            frames.append(im.convert("RGB").tobytes())
    assert all(d >= 1000 for d in durations)  # each frame is held long enough to read
    assert len(set(frames)) == 3  # features page, logit page, patched logits: three different screens
    assert out.stat().st_size < gif.MAX_BYTES


def test_the_story_presses_the_page_key_only_when_the_panes_are_paged(ui_demo):
    gif = load_script()
    narrow, wide = gif.script(ui_demo, narrow=True), gif.script(ui_demo, narrow=False)
    assert [s.keys for s in narrow] == [(), ("3",), ("space",), ("space",)]
    assert [s.keys for s in wide] == [(), (), ("space",), ("space",)]
    assert ui_demo.target in narrow[1].caption
