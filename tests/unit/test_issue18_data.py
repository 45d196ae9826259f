"""Issue 18 item 14: `trace --data` reads any UTF-8 text file; `train` warns once when `tokens` far
exceeds the traced text."""

import warnings

import pytest
from factories import make_acts

from tuiwb.errors import TuiwbError, TuiwbWarning
from tuiwb.sae.config import TrainConfig
from tuiwb.sae.train import train_saes
from tuiwb.trace.sources import iter_documents, open_sources
from tuiwb.trace.store import ActivationStore


@pytest.mark.parametrize("name", ["notes.md", "corpus.text", "README"])
def test_any_utf8_text_file_is_one_document_per_line(tmp_path, name):
    f = tmp_path / name
    f.write_text("# a heading\n\nthe cat sees the dog\ncafé €\n", encoding="utf-8")
    (src,) = open_sources([str(f)])
    assert src.kind == "txt" and src.has_text
    docs = [t for batch in iter_documents([src]) for _, t in batch]
    assert docs == ["# a heading", "the cat sees the dog", "café €"]


def test_a_binary_file_is_still_refused_in_one_line(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(TuiwbError, match="not UTF-8 text"):
        open_sources([str(f)])


def test_train_warns_once_when_tokens_exceed_twice_the_traced_data(tmp_path):
    _, acts = make_acts(tmp_path / "tiny", n_layers=1, n_docs=60)
    n = len(ActivationStore(acts))
    cfg = TrainConfig(tokens=3 * n, batch_size=256, k=4, expansion=2, threads=1, val_tokens=256, eval_tokens=None)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        train_saes(acts, [0], tmp_path / "saes", cfg, progress=False)
    ours = [w for w in got if issubclass(w.category, TuiwbWarning) and "traced tokens" in str(w.message)]
    assert len(ours) == 1 and "3×" in str(ours[0].message)


def test_tables_are_still_refused_since_a_line_is_not_a_document(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("a,b\n")
    with pytest.raises(TuiwbError, match="unsupported type '.csv'"):
        open_sources([str(f)])
