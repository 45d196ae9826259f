"""Live training on the small demo model: activations stream from the forward into the trainers.

Same text and budget as trace-then-train; the held-out FVU must agree within 10%; every layer trains
from one forward pass; the output is the SAELens layout `train_saes` writes."""

import json

import pytest
from safetensors import safe_open

from tuiwb.model.loaded import LoadedModel
from tuiwb.sae.config import TrainConfig
from tuiwb.sae.io import load_sae
from tuiwb.sae.live import LiveSource, train_live
from tuiwb.sae.train import train_saes
from tuiwb.trace.config import TraceConfig
from tuiwb.trace.tracer import trace

BASE = dict(k=32, expansion=8, tokens=120_000, batch_size=1024, threads=1, logger="none", eval_tokens=None)


@pytest.fixture(scope="module")
def text(demo_small_dir, tmp_path_factory):
    """The first 2,500 lines of the demo's train.txt (~60k tokens): the same text for both routes."""
    path = tmp_path_factory.mktemp("live") / "text.txt"
    lines = (demo_small_dir / "train.txt").read_text().splitlines()[:2500]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_live_matches_trace_then_train_and_trains_every_layer_from_one_forward(demo_small_dir, text, tmp_path,
                                                                                monkeypatch):
    acts = tmp_path / "acts.parquet"
    trace(TraceConfig(data=[str(text)], out=str(acts), layers=[1], model=str(demo_small_dir), seq_len=128,
                      batch_size=32), progress=False)
    cached = train_saes(acts, [1], tmp_path / "cached", TrainConfig(**BASE), progress=False)[1]

    stops = []
    run_to = LoadedModel.run_to
    monkeypatch.setattr(LoadedModel, "run_to", lambda self, ids, stop, **kw: (stops.append(stop),
                                                                                run_to(self, ids, stop, **kw))[1])
    src = LiveSource(model=str(demo_small_dir), data=[str(text)], buffer_tokens=16_384)
    live = train_live(src, "all", tmp_path / "live", TrainConfig(**BASE), progress=False)
    assert set(live) == {0, 1}
    assert set(stops) == {1}  # one forward to the deepest layer feeds both trainers, never one per layer
    assert live[1]["train_tokens"] == cached["train_tokens"]
    assert abs(live[1]["fvu"] - cached["fvu"]) <= 0.10 * cached["fvu"], (live[1]["fvu"], cached["fvu"])
    assert live[0]["fvu"] < 0.5 and live[1]["dead_fraction"] <= 0.10


def test_live_output_is_the_saelens_layout(demo_small_dir, text, tmp_path):
    src = LiveSource(model=str(demo_small_dir), data=[str(text)], buffer_tokens=8192)
    cfg = TrainConfig(**{**BASE, "tokens": 20_000, "expansion": 2, "k": 8})
    train_live(src, [0], tmp_path / "saes", cfg, progress=False)
    d = tmp_path / "saes" / "layer_0"
    meta = json.loads((d / "cfg.json").read_text())
    assert meta["d_in"] == 64 and meta["d_sae"] == 128 and meta["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    with safe_open(str(d / "sae_weights.safetensors"), "pt") as f:
        assert set(f.keys()) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    sae = load_sae(d)
    assert sae.cfg.training["live"]["model"] == str(demo_small_dir) and sae.cfg.metrics["live"]
    sae_lens = pytest.importorskip("sae_lens")  # the `bench` extra: check SAELens itself reads it
    theirs = sae_lens.SAE.load_from_disk(str(d))
    assert theirs.cfg.d_sae == 128
