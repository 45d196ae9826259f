"""Shared pytest fixtures (rootdir conftest; ``tests/`` is on ``sys.path`` via pyproject).

The demo models are cached under ``$XDG_CACHE_HOME/tuiwb`` (default ``~/.cache/tuiwb``) by
``tuiwb.demo.demo_model_path``, so they are trained once per machine, not once per test run; the
cache's lock file makes pytest-xdist workers wait for a single build. The builders behind the
fixtures (random SAEs, tiny checkpoints, texts, traced activations) are in ``tests/factories.py``.
"""

import pytest


@pytest.fixture(scope="session")
def demo_small_dir():
    """The small demo model (2 layers × 64; ~30 s to build on 2 idle cores the first time)."""
    from tuiwb.demo.model import demo_model_path

    return demo_model_path("small", progress=False)


@pytest.fixture(scope="session")
def demo_full_dir():
    """The full demo model (4 layers × 128; ~2–3 min to build on 2 idle cores the first time)."""
    from tuiwb.demo.model import demo_model_path

    return demo_model_path("full", progress=False)


@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory):
    """A temp directory shared by all pytest-xdist workers of this run (each worker's basetemp's parent)."""
    import os

    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def demo_saes(demo_full_dir, shared_tmp):
    """The full demo model traced (every layer) with a small-budget TopK SAE per layer trained here
    (what the provenance and trigger-hunt tests are calibrated on; ~1 min): a ``demo_lab.DemoLab``
    (``.model .acts .saes .layers .sae_dir(L) .prompts(kind)``)."""
    from demo_lab import build_demo_lab

    return build_demo_lab(demo_full_dir, shared_tmp / "demo-full-lab")


@pytest.fixture(scope="session")
def demo_small_saes(demo_small_dir, shared_tmp):
    """The small demo lab shipped with tuiwb (2 layers × 64): the pipeline only traces."""
    from demo_lab import shipped_lab

    return shipped_lab("small", shared_tmp / "demo-small-lab")


@pytest.fixture(scope="session")
def ui_demo(demo_small_saes):
    """``DemoResult`` of the demo pipeline (small variant)."""
    return demo_small_saes.result


@pytest.fixture
def demo_session(ui_demo):
    """A fresh Session on the demo pipeline's outputs, with the (off) trigger patch."""
    from tuiwb.commands.demo import prepare_session

    session = prepare_session(ui_demo)
    yield session
    session.close()


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """A random tiny llama checkpoint (3 layers × 32, ``factories.tiny_checkpoint``); read-only."""
    from factories import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """A text file of 240 random 16-word documents (``factories.write_texts``); read-only."""
    from factories import write_texts

    return write_texts(tmp_path_factory.mktemp("data") / "data.txt")


@pytest.fixture
def cli(capsys):
    """Run ``tuiwb`` in-process: ``cli(*argv) -> (exit code, stdout, stderr)`` of that command alone
    (anything captured before it is dropped); arguments are passed through ``str``."""
    from tuiwb.cli import main

    def run(*argv):
        capsys.readouterr()
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def cli_error(cli):
    """``cli_error(*argv) -> line``: run ``tuiwb``, assert the CLI's error contract — exit 2 and exactly
    one line, ``tuiwb: error: …``, on stderr — and return that line."""

    def run(*argv):
        code, _, err = cli(*argv)
        assert code == 2, (code, err)
        assert err.count("\n") == 1 and err.endswith("\n") and err.startswith("tuiwb: error: "), err
        return err[:-1]

    return run


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread per test process: on a shared 2-core box torch's default thread pool
    oversubscribes (pytest-xdist runs two workers) and tiny matmuls slow down by 10-80×."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
