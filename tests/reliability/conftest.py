"""Fixtures of the reliability tests: a tiny checkpoint and a corpus, built once per module."""

from __future__ import annotations

import random

import pytest

from tiny_models import WORDS, make_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("m") / "llama", "llama", n_layers=3, d_model=32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "docs.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))
                              for _ in range(400)) + "\n")
    return path


@pytest.fixture
def run_cli(capsys):
    """``run_cli(*argv) -> (exit code, stdout, stderr)`` of the real CLI, in process."""
    from tuiwb.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err.strip()

    return run
