"""--force and --overwrite replace only what tuiwb wrote; a kill leaves nothing that is not cleaned."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tuiwb.atomic import clean_stale, staged_dir
from tuiwb.locks import path_lock
from tuiwb.sae.io import load_sae, save_sae
from tuiwb.sae.model import SAE, SAEConfig


def _sae(layer=1, d_in=32, seed=0):
    torch.manual_seed(seed)
    return SAE(SAEConfig(d_in=d_in, d_sae=64, architecture="topk", k=4, hook_name=f"blocks.{layer}.hook_resid_post"))


@pytest.mark.parametrize("action", ["export", "build"])
def test_force_never_replaces_a_directory_that_is_not_a_tuiwb_patch(tmp_path, cli, action):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    argv = (["patch", "export", "--model", tmp_path / "m", "--lora", tmp_path / "lora" / "x"] if action == "export"
            else ["patch", "build", "--model", tmp_path / "m", "--sae", tmp_path / "saes" / "layer_1", "--feature", "3"])
    code, _, err = cli(*argv, "--out", other, "--force")
    assert code == 2 and "not a tuiwb patch" in err and len(err.splitlines()) == 1
    assert (other / "thesis.tex").read_text() == "years of work"
    code, _, err = cli(*argv, "--out", other)
    assert code == 2 and "already exists" in err and "--force" in err


def test_train_refuses_an_existing_layer_and_overwrite_names_the_patches_built_on_it(tmp_path, cli):
    saes = tmp_path / "saes"
    save_sae(_sae(), saes / "layer_1")
    digest = json.loads((saes / "layer_1" / "cfg.json").read_text())["tuiwb"]["weights_hash"]
    assert digest and load_sae(saes / "layer_1").cfg.weights_hash == digest
    patch = tmp_path / "lora" / "no-trigger"
    patch.mkdir(parents=True)
    (patch / "manifest.json").write_text(json.dumps({"format": "tuiwb-lora-patch", "layer": 1,
                                                     "sae": {"weights_hash": digest}}))
    from tuiwb.errors import TuiwbError, TuiwbWarning
    from tuiwb.sae.train import _check_replace

    with pytest.raises(TuiwbError, match="already holds an SAE.*`overwrite=True`"):
        _check_replace(saes / "layer_1", overwrite=False)
    with pytest.warns(TuiwbWarning, match="no-trigger was built on"):
        _check_replace(saes / "layer_1", overwrite=True)
    code, _, err = cli("train", "--acts", tmp_path / "acts.parquet", "--layer", "1", "--out", saes)
    assert code == 2  # (no activations here: the existing SAE or the missing store is refused, nothing trained)
    assert (saes / "layer_1" / "cfg.json").is_file()


def test_stale_temp_directories_are_cleaned_unless_a_live_writer_holds_them(tmp_path):
    out = tmp_path / "saes" / "layer_1"
    save_sae(_sae(), out)
    dead_tmp = out.with_name(".layer_1.tmp-dead")
    dead_old = out.with_name(".layer_1.old-12345")
    live_tmp = out.with_name(".layer_1.tmp-live")
    for d in (dead_tmp, dead_old, live_tmp):
        d.mkdir()
        (d / "junk").write_text("x")
    with path_lock(live_tmp):
        save_sae(_sae(seed=1), out)  # the next writer of layer_1 cleans what a killed one left
        assert not dead_tmp.exists() and not dead_old.exists() and live_tmp.exists()
    assert load_sae(out).cfg.weights_hash == json.loads((out / "cfg.json").read_text())["tuiwb"]["weights_hash"]


def test_a_kill_between_the_two_renames_of_a_swap_loses_nothing(tmp_path):
    out = tmp_path / "saes" / "layer_1"
    save_sae(_sae(), out)
    before = (out / "sae_weights.safetensors").read_bytes()
    os.replace(out, out.with_name(f".layer_1.old-{os.getpid() + 1}"))  # killed right after moving it aside
    clean_stale(out)
    assert (out / "sae_weights.safetensors").read_bytes() == before


def test_written_files_and_directories_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_sae(_sae(), tmp_path / "layer_1")
        with staged_dir(tmp_path / "x") as tmp:
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "layer_1").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "layer_1" / "cfg.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "layer_1" / "sae_weights.safetensors").stat().st_mode & 0o777 == 0o644
    assert not tmp.exists()
