"""Bad input gets one actionable line and exit 2 — never "internal error" — checked before long work."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("argv, says", [
    (["logits", "--prompt", "the cat", "--device", "bogus"], "--device 'bogus' is not a torch device"),
    (["logits", "--prompt", "the cat", "--device", "cuda:3"], "--device cuda:3"),
    (["logits", "--prompt", "   "], "the prompt is empty"),
    (["logits", "--prompt", "the cat", "--scale", "1:2=abc"], "bad --scale '1:2=abc': ALPHA 'abc' is not a number"),
    (["logits", "--prompt", "the cat", "--ablate", "1:x"], "bad --ablate"),
])
def test_model_command_errors(ckpt, cli_error, argv, says):
    err = cli_error(argv[0], "--model", ckpt, *argv[1:])
    assert says in err and "internal error" not in err, err


def test_prompt_file_that_is_binary(ckpt, tmp_path, cli_error):
    (tmp_path / "p.bin").write_bytes(b"\x00\x01\x02garbage\xff")
    err = cli_error("logits", "--model", ckpt, "--prompts", tmp_path / "p.bin")
    assert "not UTF-8 text" in err


def test_mistyped_model_paths_fail_at_once_without_the_hub(tmp_path, cli_error, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    for spec in ("./demoo", "demoo", "not a hub id!", str(tmp_path / "nope")):
        err = cli_error("logits", "--model", spec, "--prompt", "the cat")
        assert "demoo" in err or "nope" in err or "not a hub id" in err, err
    assert time.perf_counter() - t0 < 10  # no retries against a hub that cannot be reached


def test_outputs_that_cannot_be_written_fail_before_any_work(ckpt, tmp_path, cli_error):
    t0 = time.perf_counter()
    assert "not writable" in cli_error("demo-model", "--out", "/proc/tuiwb-demo", "--variant", "small")
    err = cli_error("patch", "export", "--model", ckpt, "--lora", tmp_path / "x", "--out", "/proc/tuiwb-out")
    assert "not writable" in err, err
    assert time.perf_counter() - t0 < 20  # neither trained nor loaded anything first


def test_train_out_that_is_a_regular_file(ckpt, corpus, tmp_path, cli, cli_error):
    acts = tmp_path / "acts.parquet"
    assert cli("trace", "--model", ckpt, "--layer", "1", "--data", corpus, "--out", acts, "--seq-len", "16",
               "--no-progress")[0] == 0
    (tmp_path / "afile").write_text("x")
    err = cli_error("train", "--acts", acts, "--layer", "1", "--out", tmp_path / "afile", "--no-progress")
    assert "is a file" in err, err
    assert (tmp_path / "afile").read_text() == "x"


def test_the_workbench_refuses_a_pipe_with_one_line(ckpt):
    r = subprocess.run([sys.executable, "-m", "tuiwb", "ui", "--model", str(ckpt), "--saes", "/x"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "needs a terminal" in r.stderr, r.stderr
    assert r.stdout == ""  # no escape codes drawn into the pipe


def test_a_closed_pipe_ends_quietly(ckpt):
    cmd = f"{sys.executable} -m tuiwb logits --model {ckpt} --prompt 'the cat' --top 50 | head -c 10"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


def test_wandb_is_not_forced_off(monkeypatch):
    from tuiwb.cli import main

    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "WANDB_MODE" not in os.environ  # --wandb logs when asked; nothing is imported otherwise


def test_bitsandbytes_is_imported_without_kernel_downloads(monkeypatch):
    """``kernels`` (which would fetch a CPU kernel from the hub on import) is unimportable meanwhile."""
    import types

    from tuiwb.model.quiet_imports import no_kernel_downloads

    fake = types.ModuleType("kernels")
    fake.get_kernel = lambda *a, **k: pytest.fail("a kernel download was attempted")
    monkeypatch.setitem(sys.modules, "kernels", fake)
    with no_kernel_downloads():
        with pytest.raises(ImportError):
            from kernels import get_kernel  # noqa: F401
    assert sys.modules["kernels"] is fake  # put back afterwards


def test_a_patch_run_opens_no_network_connection(ckpt, tmp_path, cli, monkeypatch):
    from factories import make_sae
    from tuiwb.sae.io import save_sae

    import torch

    from tuiwb.model.loading import load_model

    sae = make_sae(1, d_in=32)
    save_sae(sae, tmp_path / "saes" / "layer_1")
    (tmp_path / "fit.txt").write_text("\n".join(["the cat sees the red ball in the park ."] * 64) + "\n")
    lm = load_model(str(ckpt))
    with torch.no_grad():  # a feature that fires on the fitting text
        h = lm.run_to(torch.tensor([lm.encode("the cat sees the red ball in the park .")]), 1)[0]
        feature = int(sae.encode(h).sum(0).argmax())
    remote = []
    real = socket.socket.connect

    def connect(self, addr):
        host = addr[0] if isinstance(addr, tuple) else str(addr)
        if not (str(host).startswith("127.") or host in ("::1", "localhost") or self.family == socket.AF_UNIX):
            remote.append(addr)
        return real(self, addr)

    monkeypatch.setattr(socket.socket, "connect", connect)
    code, _, err = cli("patch", "build", "--model", ckpt, "--sae", tmp_path / "saes" / "layer_1", "--feature", feature,
                       "--data", tmp_path / "fit.txt", "--fit-tokens", "256", "--refine-steps", "0",
                       "--out", tmp_path / "lora" / "p")
    assert code == 0, err
    code, _, err = cli("logits", "--model", ckpt, "--prompt", "the cat", "--lora", tmp_path / "lora" / "p", "--json")
    assert code == 0 and "warning" not in err.lower(), err
    assert remote == []
