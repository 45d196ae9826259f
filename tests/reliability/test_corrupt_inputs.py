"""Wrong results never come back with exit 0: corrupt shards, other weights, unknown tokens, pickles."""

from __future__ import annotations

import json

import pytest

from tuiwb.errors import TuiwbError

TRACE = ["trace", "--layer", "1", "--seq-len", "16", "--batch-size", "4", "--windows-per-shard", "8", "--no-progress"]


@pytest.fixture(scope="module")
def acts(ckpt, corpus, tmp_path_factory):
    from tuiwb.cli import main

    out = tmp_path_factory.mktemp("acts") / "acts.parquet"
    assert main([*TRACE, "--model", str(ckpt), "--data", str(corpus), "--out", str(out)]) == 0
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_flipped_bytes_in_a_shard_are_caught_and_named(acts, tmp_path, cli_error):
    bad = _copy(acts, tmp_path / "bad.parquet")
    shard = sorted(bad.glob("part-*.parquet"))[1]
    raw = bytearray(shard.read_bytes())
    for i in range(len(raw) // 3, len(raw) // 3 + 64):  # inside the data pages, not the footer
        raw[i] ^= 0xFF
    shard.write_bytes(bytes(raw))
    err = cli_error("train", "--acts", bad, "--layer", "1", "--out", tmp_path / "saes", "--tokens", "20k",
                    "--batch-size", "256", "--threads", "1", "--no-progress", "--log", "none")
    assert shard.name in err and "corrupt" in err and "--resume" in err, err
    assert not (tmp_path / "saes" / "layer_1").exists()


def test_out_of_range_token_ids_are_refused(acts, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tuiwb.trace.store import ActivationStore

    bad = _copy(acts, tmp_path / "ids.parquet")
    shard = sorted(bad.glob("part-*.parquet"))[0]
    table = pq.read_table(shard)
    ids = table.column("token_id").to_numpy().copy()
    ids[5] = 16_711_877  # what flipped bytes made of a token id on main
    table = table.set_column(table.schema.get_field_index("token_id"), "token_id", pa.array(ids, pa.int32()))
    pq.write_table(table, shard, compression="NONE", use_dictionary=False)
    with pytest.raises(TuiwbError, match=rf"{shard.name} is corrupt .*outside the vocabulary"):
        ActivationStore(bad).token_ids()


def test_a_truncated_trace_shard_is_one_line(acts, tmp_path, cli_error):
    bad = _copy(acts, tmp_path / "cut.parquet")
    shard = sorted(bad.glob("part-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    err = cli_error("eval", "--acts", bad, "--sae", tmp_path / "no-sae")
    assert "does not exist" in err  # the SAE is checked first; now with a real SAE:
    from factories import make_sae
    from tuiwb.sae.io import save_sae

    save_sae(make_sae(1, d_in=32, arch="topk"), tmp_path / "sae")
    err = cli_error("eval", "--acts", bad, "--sae", tmp_path / "sae")
    assert shard.name in err and "corrupt" in err, err


def test_a_truncated_feature_cache_is_recomputed(acts, tmp_path):
    from factories import make_sae
    from tuiwb.features.cache import load_or_compute
    from tuiwb.sae.io import save_sae
    from tuiwb.trace.store import ActivationStore

    sae_dir = save_sae(make_sae(1, d_in=32, arch="topk"), tmp_path / "layer_1")
    store = ActivationStore(acts)
    first = load_or_compute(sae_dir, store, progress=False)
    npz = sae_dir / "features.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    again = load_or_compute(sae_dir, store, progress=False)
    assert (again.density == first.density).all()


def test_activations_of_another_model_with_the_same_config_are_refused(acts, tmp_path, cli_error):
    from factories import make_sae, tiny_checkpoint
    from tuiwb.sae.io import save_sae

    other = tiny_checkpoint(tmp_path / "other", seed=1)  # same config, other weights (a fine-tune, say)
    manifest = json.loads((acts / "manifest.json").read_text())
    assert manifest["weights_fingerprint"]
    save_sae(make_sae(1, d_in=32, arch="topk"), tmp_path / "sae")
    err = cli_error("eval", "--acts", acts, "--sae", tmp_path / "sae", "--model", other)
    assert "same config, other weights" in err, err


@pytest.mark.parametrize("flag", [("logits", "--token"), ("features", "--target")])
def test_unknown_tokens_are_refused_with_close_matches(ckpt, acts, tmp_path, cli_error, flag):
    cmd, opt = flag
    argv = (["logits", "--model", ckpt, "--prompt", "the cat"] if cmd == "logits" else
            ["features", "--sae", tmp_path / "sae", "--acts", acts, "--model", ckpt,
             "--contrast", tmp_path / "a.txt", tmp_path / "b.txt"])
    if cmd == "features":
        from factories import make_sae
        from tuiwb.sae.io import save_sae

        save_sae(make_sae(1, d_in=32, arch="topk"), tmp_path / "sae")
        (tmp_path / "a.txt").write_text("the cat\n")
        (tmp_path / "b.txt").write_text("the dog\n")
    err = cli_error(*argv, opt, "cta")
    assert "not a single token" in err and "'cat'" in err, err  # a close vocabulary entry is offered


def test_pickle_weights_are_refused_unless_asked(ckpt, tmp_path, cli_error):
    import shutil

    import torch
    from safetensors.torch import load_file

    pk = tmp_path / "pickled"
    shutil.copytree(ckpt, pk)
    for f in pk.glob("*.safetensors"):
        torch.save(load_file(str(f)), pk / "pytorch_model.bin")
        f.unlink()
    err = cli_error("logits", "--model", pk, "--prompt", "the cat")
    assert "pickle" in err and "--allow-pickle" in err, err


def test_data_the_tokenizer_does_not_know_warns_with_the_unknown_fraction(ckpt, tmp_path, cli):
    (tmp_path / "alien.txt").write_text("\n".join(["zorg blip quux frob"] * 50) + "\n")
    code, _, err = cli(*TRACE, "--model", ckpt, "--data", tmp_path / "alien.txt", "--out", tmp_path / "a.parquet")
    assert code == 0 and "tuiwb: warning: 100% of the tokens" in err and "unknown to the tokenizer" in err, err
