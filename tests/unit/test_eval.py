"""``tuiwb eval``: the metrics agree with an independent computation from the files on disk; splicing
an exact identity SAE into the model changes nothing; errors are one line."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from factories import make_acts, make_sae, poison_rows, tiny_checkpoint
from safetensors.numpy import load_file

from tuiwb.sae.io import save_sae
from tuiwb.errors import TuiwbError
from tuiwb.sae.eval import EvalResult, evaluate
from tuiwb.model.loading import load_model
from tuiwb.sae.model import SAE
from tuiwb.sae.io import load_sae
from tuiwb.sae.config import TrainConfig
from tuiwb.sae.train import train_saes
from tuiwb.trace.store import ActivationStore


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model, acts = make_acts(root)
    cfg = TrainConfig(tokens=20_000, batch_size=512, k=6, expansion=4, threads=1, eval_tokens=None)
    train_saes(acts, [1], root / "saes", cfg, progress=False)
    return model, acts, root / "saes" / "layer_1"


def independent_metrics(acts, sae_dir, layer):
    """FVU/MSE/L0/dead over all non-special rows, from the Parquet shards and safetensors directly."""
    man = json.loads((acts / "manifest.json").read_text())
    d = man["d_model"]
    xs, toks = [], []
    for shard in sorted(man["shards"], key=lambda s: s["seq_start"]):
        t = pq.read_table(acts / shard["file"], columns=["token_id", f"blocks.{layer}.hook_resid_post"])
        toks.append(t.column(0).to_numpy())
        raw = b"".join(v.as_py() for v in t.column(1))
        xs.append(np.frombuffer(raw, dtype=man["dtype"]).reshape(-1, d))
    x = np.concatenate(xs).astype(np.float64)
    x = x[~np.isin(np.concatenate(toks), man["special_token_ids"])]
    w = {k: v.astype(np.float64) for k, v in load_file(str(sae_dir / "sae_weights.safetensors")).items()}
    k = json.loads((sae_dir / "cfg.json").read_text())["k"]
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    top = np.argpartition(-pre, k - 1, axis=1)[:, :k]
    a = np.zeros_like(pre)
    np.put_along_axis(a, top, np.maximum(np.take_along_axis(pre, top, 1), 0), 1)
    err = x - (a @ w["W_dec"] + w["b_dec"])
    fvu = (err**2).sum() / ((x - x.mean(0)) ** 2).sum()
    return {"fvu": fvu, "mse": (err**2).mean(), "l0": (a > 0).sum(1).mean(),
            "dead_fraction": float(((a > 0).sum(0) == 0).mean()), "n_tokens": len(x)}


def test_metrics_agree_with_an_independent_computation(trained):
    _, acts, sae_dir = trained
    res = evaluate(ActivationStore(acts), load_sae(sae_dir), split="all")
    ref = independent_metrics(acts, sae_dir, 1)
    assert res.n_tokens == ref["n_tokens"]
    for key in ("fvu", "mse", "l0", "dead_fraction"):
        assert getattr(res, key) == pytest.approx(ref[key], rel=1e-4, abs=1e-9), key
    assert 0 < res.fvu < 1 and res.ce_clean is None


def test_heldout_is_the_training_holdout(trained):
    _, acts, sae_dir = trained
    store, sae = ActivationStore(acts), load_sae(sae_dir)
    res = evaluate(store, sae)  # split="heldout", val_fraction from the SAE's training config
    assert res.split == "heldout"
    assert res.n_tokens == len(store.row_indices("heldout", val_fraction=sae.cfg.training["val_fraction"]))
    sub = evaluate(store, sae, split="all", max_tokens=500)
    assert sub.n_tokens == 500


def identity_sae(d: int, layer: int) -> SAE:
    """relu(x) − relu(−x) = x: a ReLU SAE with W_enc = [I, −I], W_dec = [I; −I] reconstructs exactly."""
    sae = make_sae(layer, d, 2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_identity_sae_spliced_in_is_lossless(trained):
    model_dir, acts, _ = trained
    store, loaded = ActivationStore(acts), load_model(str(model_dir))
    res = evaluate(store, identity_sae(32, 1), split="all", loaded=loaded)
    assert res.fvu < 1e-6 and res.kl < 1e-6
    assert res.ce_sae == pytest.approx(res.ce_clean, abs=1e-5)
    assert res.ce_loss_score == pytest.approx(1.0, abs=1e-4)
    # ce_clean, independently: plain forward over the same windows, targets that are real tokens
    special = store.special_token_ids
    nll, n = 0.0, 0
    for _, tokens, _rows in store.windows("all"):
        ids = torch.as_tensor(tokens, dtype=torch.long)[None]
        with torch.no_grad():
            logp = torch.log_softmax(loaded.model(input_ids=ids).logits[0, :-1].float(), -1)
        ok = ~np.isin(tokens[:-1], special) & ~np.isin(tokens[1:], special)
        tgt = ids[0, 1:]
        nll -= float(logp[torch.as_tensor(ok), tgt[torch.as_tensor(ok)]].sum())
        n += int(ok.sum())
    assert res.n_ce_tokens == n
    assert res.ce_clean == pytest.approx(nll / n, rel=1e-5)
    zero = evaluate(store, identity_sae(32, 1), split="all", loaded=loaded, max_tokens=300)
    mean = evaluate(store, identity_sae(32, 1), split="all", loaded=loaded, max_tokens=300, ablation="mean")
    assert 300 <= zero.n_ce_tokens < 300 + store.seq_len  # stops at the window that reaches max_tokens
    assert mean.n_ce_tokens == zero.n_ce_tokens and mean.ce_clean == zero.ce_clean
    assert mean.ablation == "mean" and mean.ce_zero != pytest.approx(zero.ce_zero, rel=1e-6)


def test_cli_json_is_exactly_one_object(trained, cli):
    model_dir, acts, sae_dir = trained
    code, out, _ = cli("eval", "--acts", acts, "--sae", sae_dir, "--model", model_dir, "--max-tokens", "300",
                       "--json")
    assert code == 0
    obj = json.loads(out)  # fails unless stdout is exactly one JSON document
    assert set(obj) == set(EvalResult.__dataclass_fields__)
    for key in ("fvu", "mse", "l0", "dead_fraction", "n_tokens", "ce_clean", "ce_sae", "ce_zero",
                "ce_loss_score", "kl"):
        assert isinstance(obj[key], (int, float)), key
    assert obj["ablation"] == "zero"


def test_errors_are_one_line_exit_2(trained, tmp_path, cli_error):
    model_dir, acts, sae_dir = trained
    cases = {}
    save_sae(make_sae(1, 16, 32, "topk"), tmp_path / "wide")
    cases["d_in is 16"] = ["--sae", tmp_path / "wide"]
    save_sae(make_sae(7, 32, 32, "topk"), tmp_path / "deep")
    cases["layer 7"] = ["--sae", tmp_path / "deep"]
    save_sae(make_sae(1, 32, 32, "topk", hook_name="blocks.1.hook_mlp_out"), tmp_path / "mlp")
    cases["but the activations hold blocks.1.hook_resid_post"] = ["--sae", tmp_path / "mlp"]
    (tmp_path / "notsae").mkdir()
    (tmp_path / "notsae" / "cfg.json").write_text('{"hello": 1}')
    (tmp_path / "notsae" / "sae_weights.safetensors").write_bytes(b"")
    cases["not an SAE config"] = ["--sae", tmp_path / "notsae"]
    other = tiny_checkpoint(tmp_path / "other")
    cases["not the model the activations"] = ["--sae", sae_dir, "--model", other]
    for expect, extra in cases.items():
        assert expect in cli_error("eval", "--acts", acts, *extra), expect


def test_nan_in_activations(trained, tmp_path):
    import shutil

    _, acts, sae_dir = trained
    bad = tmp_path / "bad.parquet"
    shutil.copytree(acts, bad)
    poison_rows(bad, 1, [3])
    with pytest.raises(TuiwbError, match="NaN or inf"):
        evaluate(ActivationStore(bad), load_sae(sae_dir), split="all")
