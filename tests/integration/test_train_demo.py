"""End to end on the (small) demo model: trace its middle layer, train a TopK SAE (k=32, 8×) on a
small budget, and check the issue's quality bar on held-out text: FVU ≤ 0.15, ≤ 10% dead latents,
CE-loss score ≥ 0.9 with the SAE spliced into the model. The full budget on the full demo model is
``benchmarks/bench_train.py`` (results in docs/benchmarks.md ``## train``)."""

import json

import pytest

from tuiwb.trace.config import TraceConfig
from tuiwb.trace.tracer import trace


@pytest.fixture(scope="module")
def demo_acts(demo_small_dir, tmp_path_factory):
    n_layers = json.loads((demo_small_dir / "config.json").read_text())["num_hidden_layers"]
    layer = n_layers // 2
    acts = tmp_path_factory.mktemp("demo") / "acts.parquet"
    trace(TraceConfig(data=[str(demo_small_dir / "train.txt")], out=str(acts), layers=[layer],
                      model=str(demo_small_dir), seq_len=128, batch_size=32, max_tokens=80_000), progress=False)
    return demo_small_dir, acts, layer


def test_topk_on_demo_meets_the_quality_bar(demo_acts, tmp_path, cli):
    model, acts, layer = demo_acts
    code, out, _ = cli("train", "--acts", acts, "--layer", layer, "--out", tmp_path / "saes", "--arch", "topk",
                       "--k", "32", "--expansion", "8", "--tokens", "400k", "--threads", "1", "--no-progress",
                       "--json", "--log", "none")
    assert code == 0
    train = json.loads(out)[str(layer)]
    assert train["fvu"] <= 0.15 and train["dead_fraction"] <= 0.10
    code, out, _ = cli("eval", "--acts", acts, "--sae", tmp_path / "saes" / f"layer_{layer}", "--model", model,
                       "--max-tokens", "4000", "--json")
    assert code == 0
    ev = json.loads(out)
    assert ev["fvu"] <= 0.15 and ev["l0"] <= 32
    assert ev["ce_loss_score"] >= 0.9
    assert ev["ce_zero"] > ev["ce_sae"] >= ev["ce_clean"] - 0.05


def test_lr_auto_is_within_1_5x_of_the_grid_best(demo_acts, tmp_path):
    """`lr auto` against a small LR grid at the same budget, on held-out FVU (the issue's bar)."""
    from tuiwb.sae.config import TrainConfig
    from tuiwb.sae.train import train_saes

    _, acts, layer = demo_acts
    base = dict(k=32, expansion=8, tokens=150_000, batch_size=1024, threads=1, logger="none", eval_tokens=None)
    grid = {lr: train_saes(acts, [layer], tmp_path / f"lr{lr}", TrainConfig(lr=lr, **base),
                           progress=False)[layer]["fvu"] for lr in (3e-4, 1e-3, 3e-3, 1e-2)}
    auto = train_saes(acts, [layer], tmp_path / "auto", TrainConfig(lr="auto", lr_find_steps=30, **base),
                      progress=False)[layer]
    assert auto["fvu"] <= 1.5 * min(grid.values()), (auto["lr"], auto["fvu"], grid)
