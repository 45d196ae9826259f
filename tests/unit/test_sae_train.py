"""The Lightning SAE trainer on a tiny traced model: it learns, saves what it learned, the LR finder
works, the objectives do what they claim, and bad input gives one-line errors."""

import json
import sys
import math
import shutil

import pytest
import torch
from factories import make_acts, make_sae, poison_rows

from tuiwb.cli import build_parser
from tuiwb.errors import TuiwbError
from tuiwb.sae.eval import evaluate
from tuiwb.sae.io import load_sae, load_saes
from tuiwb.sae.lr_search import LR_GRID, TOLERANCE
from tuiwb.sae.objective import lr_lambda, relu_loss, topk_loss
from tuiwb.sae.config import TrainConfig
from tuiwb.sae.train import train_saes
from tuiwb.trace.store import ActivationStore

FAST = dict(batch_size=512, k=8, expansion=4, threads=1, val_tokens=2048, eval_tokens=None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_acts(tmp_path_factory.mktemp("tiny"))  # (model_dir, acts_dir)


def test_topk_trains_saves_and_reloads(tiny, tmp_path):
    _, acts = tiny
    store = ActivationStore(acts)
    cfg = TrainConfig(tokens=60_000, **FAST)
    results = train_saes(acts, [1], tmp_path, cfg, progress=False)
    m = results[1]
    sae = load_sae(tmp_path / "layer_1")
    # the untrained SAE (same init recipe, no steps) as the yardstick
    untrained = make_sae(1, 32, 128, "topk", k=8)
    with torch.no_grad():
        untrained.b_dec.copy_(store.read_rows(1, store.row_indices("train")[:4096]).mean(0))
    base = evaluate(store, untrained, split="heldout", val_fraction=0.1)
    assert m["fvu"] < 0.5 * base.fvu
    assert m["l0"] <= 8 and 0 <= m["dead_fraction"] <= 1
    assert m["train_tokens"] == math.ceil(60_000 / 512) * 512
    # what is on disk is what was measured: the folded SAE evaluates to the recorded metrics
    again = evaluate(store, sae, split="heldout")
    assert again.fvu == pytest.approx(m["fvu"], rel=1e-6) and again.n_tokens == m["n_tokens"]
    c = sae.cfg
    assert (c.layer, c.hook_name, c.d_sae, c.k) == (1, "blocks.1.hook_resid_post", 128, 8)
    assert c.model_config_hash == store.config_hash and c.model_name == store.model_id
    assert c.training["tokens"] == 60_000 and c.training["val_fraction"] == 0.1
    assert c.norm_scaling_factor > 1  # tiny-model activations are small: the factor was folded in
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(128))
    assert set(load_saes(tmp_path)) == {1}


def test_lr_auto_picks_the_best_probe_and_says_why(tiny, tmp_path, capsys):
    _, acts = tiny
    cfg = TrainConfig(tokens=30_000, lr="auto", lr_find_steps=20, **FAST)
    m = train_saes(acts, [0], tmp_path, cfg, progress=False)[0]
    training = load_sae(tmp_path / "layer_0").cfg.training
    lr, probes = training["lr_found"], training["lr_search"]
    assert m["lr"] == lr and lr in LR_GRID and len(probes) >= 3
    best = min(probes.values())
    assert probes[f"{lr:.3g}"] <= best * (1 + TOLERANCE)
    assert f"chose {lr:.1e}" in capsys.readouterr().err


def test_relu_beta_trades_l0_for_fvu(tiny, tmp_path):
    _, acts = tiny
    out = {}
    for beta in (0.5, 20.0):
        cfg = TrainConfig(arch="relu", l1=beta, tokens=40_000, **FAST)
        out[beta] = train_saes(acts, [1], tmp_path / str(beta), cfg, progress=False)[1]
    assert out[20.0]["l0"] < out[0.5]["l0"]
    assert out[20.0]["fvu"] > out[0.5]["fvu"]
    assert load_sae(tmp_path / "20.0" / "layer_1").cfg.architecture == "relu"


def test_auxk_gives_dead_latents_a_gradient_only_when_dead():
    sae = make_sae(None, 8, 64, "topk", k=2, seed=0)
    with torch.no_grad():
        sae.b_enc[:16] = -20.0  # these 16 latents can never win the top-k
    x = torch.randn(256, 8)
    none_dead = torch.zeros(64, dtype=torch.bool)
    out = topk_loss(sae, x, none_dead)
    out.loss.backward()
    silent = ~out.fired  # latents not in any token's top-k
    assert silent[:16].all() and float(out.aux) == 0.0
    assert sae.W_enc.grad[:, silent].abs().max() == 0  # TopK alone: no gradient to silent latents
    sae.zero_grad()
    out = topk_loss(sae, x, silent)
    out.loss.backward()
    assert float(out.aux) > 0
    assert (sae.W_enc.grad[:, silent].abs().sum(0) > 0).all()  # AuxK reaches every dead latent


def test_relu_loss_penalises_activation_mass():
    sae = make_sae(None, 8, 32, seed=0)
    x = torch.randn(64, 8)
    a, b = relu_loss(sae, x, 0.0), relu_loss(sae, x, 2.0)
    torch.testing.assert_close(b.loss - a.loss, 2.0 * b.aux)
    assert float(b.l0) == float((torch.relu(sae.pre_acts(x)) > 0).sum(-1).float().mean())


def test_lr_schedule_warms_up_and_decays_to_zero():
    lrs = [lr_lambda(s, 100, 10, 70) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in lrs[10:70])
    assert lrs[99] == pytest.approx(1 / 30) and all(a >= b for a, b in zip(lrs[70:], lrs[71:]))


def test_layer_missing_from_acts(tiny, tmp_path):
    with pytest.raises(TuiwbError, match="layer 5 is not in"):
        train_saes(tiny[1], [5], tmp_path, TrainConfig(tokens=1000, **FAST), progress=False)


def test_nan_in_activations_is_a_one_line_error(tiny, tmp_path, cli_error):
    bad = tmp_path / "bad.parquet"
    shutil.copytree(tiny[1], bad)
    store = ActivationStore(bad)
    poison_rows(bad, 1, [int(r) for r in store.row_indices("train")[::50]])
    assert "NaN or inf" in cli_error("train", "--acts", bad, "--layer", "1", "--out", tmp_path / "s",
                                     "--tokens", "5000", "--threads", "1", "--no-progress")
    assert not (tmp_path / "s" / "layer_1").exists()


@pytest.mark.parametrize("kw,match", [
    ({"lr": "fast"}, "`lr`"), ({"lr": -1.0}, "`lr`"), ({"val_fraction": 1.0}, "`val_fraction`"),
    ({"arch": "gated"}, "`arch`"), ({"d_sae": 4, "k": 8}, "larger than"), ({"strategy": "fsdp"}, "`strategy`"),
])
def test_config_errors(kw, match):
    with pytest.raises(TuiwbError, match=match):
        TrainConfig(**kw)


def test_config_errors_name_the_flag_on_the_cli(tiny, tmp_path, cli_error):
    """The library names the parameter (`val_fraction`); the CLI shows the flag the user typed."""
    for argv, flag in ((["--val-fraction", "1"], "--val-fraction"), (["--log", "csv", "--k", "0"], "--k"),
                       (["--expansion", "1", "--k", "999"], "--k")):
        err = cli_error("train", "--acts", tiny[1], "--layer", "0", "--out", tmp_path / "s", "--no-progress", *argv)
        assert flag in err and "`" not in err, err
    assert not (tmp_path / "s").exists()


def test_cli_train_json_and_defaults_match_config(tiny, tmp_path, cli):
    args = build_parser().parse_args(["train", "--acts", "a", "--layer", "0", "--out", "o"])
    assert (args.lr, args.l1, args.logger) == (TrainConfig().lr, TrainConfig().l1, TrainConfig().logger)
    assert (args.tokens, args.batch_size, args.k, args.expansion) == (
        TrainConfig().tokens, TrainConfig().batch_size, TrainConfig().k, TrainConfig().expansion)
    # Another test may have imported wandb already (SAELens imports it when the bench extra is installed):
    # what matters is that this command does not.
    had_wandb = "wandb" in sys.modules
    code, out, _ = cli("train", "--acts", tiny[1], "--layer", "all", "--out", tmp_path / "s", "--tokens", "4k",
                       "--batch-size", "512", "--k", "4", "--expansion", "2", "--threads", "1", "--no-progress",
                       "--json", "--log", "csv")
    out = json.loads(out)
    assert code == 0 and set(out) == {"0", "1"}
    assert (tmp_path / "s" / "logs" / "layer_0" / "metrics.csv").is_file()
    assert had_wandb or "wandb" not in sys.modules  # never imported unless --wandb
