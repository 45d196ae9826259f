"""``benchmarks/bench_scale.py`` and ``benchmarks/gpu_check.sh``: the cheap, CPU-testable parts (the full
runs are benchmarks: ``bench_scale.py --tiny`` and ``gpu_check.sh --dry-run`` run every stage)."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import bench_scale  # noqa: E402


def test_shapes_have_the_real_widths():
    m, l3, q = (bench_scale.SHAPES[k] for k in ("mistral-7b", "llama-3-8b", "qwen2.5-7b"))
    assert (m["hidden_size"], m["intermediate_size"], m["num_attention_heads"], m["num_key_value_heads"],
            m["vocab_size"]) == (4096, 14336, 32, 8, 32000)
    assert l3["vocab_size"] == 128256 and q["hidden_size"] == 3584 and q["vocab_size"] == 152064


def test_tiny_model_and_tokenizer_have_the_shape(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    out = bench_scale.build_model("tiny", 2, tmp_path / "m")
    cfg = AutoConfig.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    spec = bench_scale.SHAPES["tiny"]
    assert cfg.num_hidden_layers == 2 and cfg.hidden_size == spec["hidden_size"]
    assert cfg.num_key_value_heads == spec["num_key_value_heads"]
    assert len(tok) == cfg.vocab_size == spec["vocab_size"]  # BPE padded to the exact vocabulary
    ids = tok("def f(x):\n    return x", add_special_tokens=False)["input_ids"]
    assert 0 < len(ids) < 20 and tok.decode(ids) == "def f(x):\n    return x"
    assert (out / "train.txt").stat().st_size > 0 and list(out.glob("*.safetensors"))


def test_plan_covers_every_stage_of_the_issue():
    args = argparse.Namespace(device="cuda", quant="4bit", layers=32, trace_tokens=None, train_tokens=None,
                              expansion=8, toggles=30)
    stages = dict(bench_scale.plan(args, Path("/m"), Path("/w")))
    for name in ("trace", "trace vs bare", "train (from disk)", "active feature", "eval", "features", "logits + hook", "patch build",
                 "logits + LoRA", "provenance d2", "session + ui"):
        assert name in stages, name
    assert stages["trace"][stages["trace"].index("--quant") + 1] == "4bit"
    assert stages["provenance d2"][stages["provenance d2"].index("--depth") + 1] == "2"
    traced = [stages["trace"][i + 1] for i, a in enumerate(stages["trace"]) if a == "--layer"]
    assert traced == ["14", "15", "16"]  # three adjacent layers: the BFS has two levels to walk


def test_summary_checks_and_table():
    args = argparse.Namespace(shape="tiny", layers=2, quant=None, device="cpu")
    results = [{"stage": "trace vs bare", "rc": 0, "seconds": 1.0, "peak_rss_gb": 0.5, "ratio": 0.95},
               {"stage": "patch build", "rc": 0, "seconds": 9.0, "peak_rss_gb": 0.6, "fit_seconds": 2.5},
               {"stage": "session + ui", "rc": 0, "seconds": 3.0, "peak_rss_gb": 0.7, "ui_p95_ms": 80.0,
                "peak_cuda_gb": 3.5}]
    s = bench_scale.summarise(args, results, 1.0, Path("/m"))
    assert s["checks"] == {"ui_p95_ms": 80.0, "trace_over_bare": 0.95, "patch_build_s": 2.5, "peak_cuda_gb": 3.5}
    assert s["all_ok"] and s["max_rss_gb"] == 0.7
    table = bench_scale.markdown(s)
    assert table.count("\n") == 4 and "| patch build | 0 | 9.0 | 0.6 | - | fit_seconds 2.5 |" in table
    json.dumps(s)


def test_gpu_check_refuses_unknown_arguments_and_is_valid_bash():
    script = BENCH / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    r = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown argument --bogus" in r.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU refusal")
def test_gpu_check_without_a_gpu_says_so(tmp_path):
    r = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--work", str(tmp_path)], capture_output=True,
                       text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "no CUDA GPU" in r.stderr and "--dry-run" in r.stderr
