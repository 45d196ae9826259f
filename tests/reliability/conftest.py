"""Fixtures of the reliability tests (``ckpt``, ``cli`` and ``cli_error`` come from tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """400 documents of 5–40 words: enough windows for a dozen shards of 4 windows."""
    from factories import write_texts

    path = tmp_path_factory.mktemp("data") / "docs.txt"
    write_texts(path, n=400, length=(5, 40))
    return path
