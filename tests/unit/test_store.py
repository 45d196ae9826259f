"""Reading activations back: batches, splits, special rows, rows, windows and contexts."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tiny_models import WORDS, make_tiny_checkpoint

from tuiwb.errors import TuiwbError
from tuiwb.model.loading import load_model
from tuiwb.trace.store import ActivationStore
from tuiwb.trace.config import TraceConfig
from tuiwb.trace.tracer import trace

SEQ = 16


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on a shared 2-core box
    root = tmp_path_factory.mktemp("store")
    ckpt = make_tiny_checkpoint(root / "m", "llama", n_layers=2, d_model=32)
    rng = random.Random(1)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(150)]
    (root / "d.txt").write_text("\n".join(lines))
    # Small shards and row groups so that batches really cross files and groups.
    cfg = TraceConfig(data=[str(root / "d.txt")], out=str(root / "a.parquet"), layers=[0, 1], seq_len=SEQ,
                      batch_size=8, windows_per_shard=10)
    trace(cfg, progress=False, loaded=load_model(str(ckpt)))
    torch.set_num_threads(old)
    return ActivationStore(root / "a.parquet")


def all_rows(store, layer):
    """Reference: every activation of ``layer`` in row order, straight from the Parquet files."""
    parts = []
    for s in sorted(store.manifest["shards"], key=lambda s: s["seq_start"]):
        col = pq.read_table(store.path / s["file"], columns=[f"blocks.{layer}.hook_resid_post"]).column(0)
        raw = b"".join(x.as_py() for x in col)
        parts.append(np.frombuffer(raw, np.float16).reshape(-1, store.d_model))
    return torch.from_numpy(np.concatenate(parts).astype(np.float32))


def test_properties(store):
    m = store.manifest
    assert store.layers == [0, 1] and store.d_model == 32 and store.seq_len == SEQ
    assert store.n_rows == m["n_tokens"] == len(store) == store.n_windows * SEQ
    assert len(store._files) > 3 and store.column(1) == "blocks.1.hook_resid_post"
    assert store.model_id == m["model_id"] and store.config_hash == m["config_hash"] and store.complete


def test_read_rows_any_order(store):
    ref = all_rows(store, 1)
    rows = np.array([store.n_rows - 1, 0, 17, 17, 5 * SEQ + 3, store.n_rows // 2])
    torch.testing.assert_close(store.read_rows(1, rows), ref[rows])
    assert store.read_rows(0, []).shape == (0, 32)
    with pytest.raises(IndexError):
        store.read_rows(0, [store.n_rows])


def test_row_group_reads_are_zero_copy_views(store):
    g = store._read_group(0, 0, store.column(0))
    assert g.dtype == np.float16 and g.shape[1] == 32 and not g.flags.owndata


def test_split_by_document_and_special_rows(store):
    train, held = store.row_indices("train"), store.row_indices("heldout")
    everything = store.row_indices("all", exclude_special=False)
    assert len(everything) == store.n_rows
    dtrain, dheld = set(store.doc_ids(train).tolist()), set(store.doc_ids(held).tolist())
    assert dtrain and dheld and not dtrain & dheld
    assert 0.05 < len(dheld) / (len(dtrain) + len(dheld)) < 0.15
    specials = set(store.special_token_ids)
    assert not specials & set(store.token_ids(np.concatenate([train, held])).tolist())
    # Excluded rows are exactly the special ones (BOS at least at every window start).
    non_special = ~np.isin(store.token_ids(), list(specials))
    assert len(train) + len(held) == non_special.sum() < store.n_rows - store.n_windows + 1
    # Deterministic, and a different fraction moves whole documents only.
    assert np.array_equal(held, ActivationStore(store.path).row_indices("heldout"))
    held3 = store.row_indices("heldout", val_fraction=0.3)
    assert set(dheld) <= set(store.doc_ids(held3).tolist())
    assert len(store.row_indices("heldout", val_fraction=0.0)) == 0
    with pytest.raises(TuiwbError):
        store.row_indices("test")


def test_batches_cover_the_split_exactly_once(store):
    ref = all_rows(store, 0)
    rows = store.row_indices("train")
    seq = list(store.batches(0, 64, shuffle=False))
    assert all(b.shape == (64, 32) and b.dtype == torch.float32 for b in seq[:-1]) and len(seq[-1]) <= 64
    torch.testing.assert_close(torch.cat(seq), ref[rows])
    # Shuffled with a buffer far smaller than the data: same multiset of rows, different order.
    shuf = torch.cat(list(store.batches(0, 64, seed=1, shuffle_buffer_mb=0.05)))
    assert not torch.equal(shuf, ref[rows])
    key = lambda x: sorted(map(tuple, x.numpy().tolist()))  # noqa: E731
    assert key(shuf) == key(ref[rows])
    # Same seed, same order; another seed, another order.
    again = torch.cat(list(store.batches(0, 64, seed=1, shuffle_buffer_mb=0.05)))
    other = torch.cat(list(store.batches(0, 64, seed=2, shuffle_buffer_mb=0.05)))
    assert torch.equal(shuf, again) and not torch.equal(shuf, other)
    # Held-out and special rows on request; max_tokens and drop_last.
    held = torch.cat(list(store.batches(0, 50, split="heldout", shuffle=False)))
    torch.testing.assert_close(held, ref[store.row_indices("heldout")])
    assert sum(len(b) for b in store.batches(0, 64, split="all", exclude_special=False)) == store.n_rows
    capped = list(store.batches(0, 64, max_tokens=200))
    assert [len(b) for b in capped] == [64, 64, 64, 8]
    assert all(len(b) == 64 for b in store.batches(0, 64, drop_last=True))


def test_windows_and_context(store):
    wins = list(store.windows())
    assert len(wins) == store.n_windows and [w[0] for w in wins] == list(range(store.n_windows))
    seq_id, toks, rows = wins[3]
    assert np.array_equal(toks, store.token_ids(rows)) and rows[0] == 3 * SEQ
    assert np.array_equal(store.positions(rows), np.arange(SEQ)) and (store.seq_ids(rows) == 3).all()
    train = {w[0] for w in store.windows("train")}
    held = {w[0] for w in store.windows("heldout")}
    assert train and held and not train & held and train | held == set(range(store.n_windows))
    ctx = store.context(rows[2], before=8, after=4)  # clipped at the window start
    assert [r for _, r in ctx] == list(range(rows[0], rows[6] + 1))
    assert [t for t, _ in ctx] == toks[:7].tolist()
    ctx = store.context(rows[-2], before=3, after=4)  # clipped at the window end
    assert [r for _, r in ctx] == list(range(rows[-5], rows[-1] + 1))


def test_pickles_for_dataloader_workers(store):
    s2 = pickle.loads(pickle.dumps(store))
    torch.testing.assert_close(s2.read_rows(1, [5, 6]), store.read_rows(1, [5, 6]))


def test_errors(store, tmp_path):
    with pytest.raises(TuiwbError, match=r"holds layers \[0, 1\]"):
        store.column(5)
    with pytest.raises(TuiwbError, match="does not exist"):
        ActivationStore(tmp_path / "nope.parquet")
    (tmp_path / "empty.parquet").mkdir()
    with pytest.raises(TuiwbError, match="not a tuiwb activation directory"):
        ActivationStore(tmp_path / "empty.parquet")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "empty.parquet" / "part-000000.parquet")
    with pytest.raises(TuiwbError, match="val_fraction"):
        store.row_indices("train", val_fraction=1.0)
