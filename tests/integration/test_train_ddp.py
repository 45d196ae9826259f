"""`tuiwb train --devices 2 --strategy ddp` on CPU (gloo): two processes train one SAE.

Lightning's ``ddp`` strategy re-launches the running command for rank 1 (``python -m tuiwb ...``),
so the test runs the CLI in a subprocess, as a user would; ``ddp_spawn`` inside pytest would have to
pickle the module and re-import the test environment in each child.
"""

import json
import os
import subprocess
import sys

from factories import make_acts

from tuiwb.sae.io import load_sae


def test_two_process_cpu_ddp_fit(tmp_path):
    _, acts = make_acts(tmp_path, n_docs=300)
    out = tmp_path / "saes"
    cmd = [sys.executable, "-m", "tuiwb", "train", "--acts", str(acts), "--layer", "1", "--out", str(out),
           "--devices", "2", "--strategy", "ddp", "--tokens", "16k", "--batch-size", "512", "--k", "4",
           "--expansion", "2", "--json", "--no-progress", "--log", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads(r.stdout)["1"]  # one JSON object: the rank-1 worker printed nothing
    assert metrics["world_size"] == 2
    assert metrics["train_tokens"] == 16 * 512 * 2  # ceil(16k / (512 × 2)) = 16 steps per rank
    sae = load_sae(out / "layer_1")
    assert sae.cfg.training["devices"] == 2 and sae.cfg.training["strategy"] == "ddp"
    assert 0 < metrics["fvu"] < 1
    assert not (tmp_path / "lightning_logs").exists()


def test_two_process_cpu_ddp_live(tmp_path, demo_small_dir):
    """Live training under `--devices 2 --strategy ddp`: each rank forwards half the windows, one SAE."""
    text = tmp_path / "text.txt"
    text.write_text("\n".join((demo_small_dir / "train.txt").read_text().splitlines()[:600]) + "\n")
    out = tmp_path / "saes"
    cmd = [sys.executable, "-m", "tuiwb", "train", "--model", str(demo_small_dir), "--data", str(text), "--layer", "0",
           "--out", str(out), "--devices", "2", "--strategy", "ddp", "--tokens", "8k", "--batch-size", "256",
           "--k", "4", "--expansion", "2", "--json", "--no-progress", "--log", "none", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads(r.stdout)["0"]
    assert metrics["world_size"] == 2 and metrics["train_tokens"] == 16 * 256 * 2
    assert 0 < metrics["fvu"] < 1
    assert load_sae(out / "layer_0").cfg.training["live"]["model"] == str(demo_small_dir)
