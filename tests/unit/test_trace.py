"""The activation recorder: packing, round trip against a direct forward pass, resume, shards, errors."""

from __future__ import annotations

import json
import random
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from tiny_models import WORDS, make_tiny_checkpoint

from tuiwb.trace.windows import pack_windows
from tuiwb.errors import TuiwbError
from tuiwb.model.loading import load_model
from tuiwb.trace.store import ActivationStore
from tuiwb.trace.config import TraceConfig
from tuiwb.trace.tracer import trace

SEQ = 16


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("m") / "llama", "llama", n_layers=3, d_model=32)


@pytest.fixture(scope="module")
def lm(ckpt):
    return load_model(str(ckpt))


def write_corpus(path, n_docs=120, seed=0, blank_every=7):
    rng = random.Random(seed)
    lines = []
    for i in range(n_docs):
        lines.append("" if i % blank_every == 3 else " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))))
    path.write_text("\n".join(lines) + "\n")
    return lines


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "docs.txt"
    write_corpus(path)
    return path


def cfg_for(corpus, out, **kw):
    base = dict(data=[str(corpus)], out=str(out), layers=[0, 2], seq_len=SEQ, batch_size=4, windows_per_shard=8)
    return TraceConfig(**{**base, **kw})


def shard_table(out):
    man = json.loads((out / "manifest.json").read_text())
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(out / s["file"]) for s in man["shards"]]), man


def hook_forward(lm, ids, layer):
    seen = {}
    h = lm.block(layer).register_forward_hook(lambda m, i, o: seen.__setitem__("x", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        lm.model(torch.tensor([ids]))
    h.remove()
    return seen["x"][0]  # [seq_len, d_model]


# -- packing -----------------------------------------------------------------------------------------

def test_pack_windows_bos_at_zero_docs_tracked_tail_dropped():
    docs = [(0, "5 6 7"), (2, "8 9 10 11 12 13 14"), (3, "15 16")]  # doc 1 was a blank line
    tokenize = lambda texts: [[int(t) for t in s.split()] for s in texts]  # noqa: E731
    wins = list(pack_windows([docs[:2], docs[2:]], tokenize, seq_len=5, bos_id=1))
    # stream: B5 6 7 B8 9 10 11 12 13 14 B15 16 → [B 5 6 7 B] [B 8 9 10 11] [B 12 13 14 B] (tail "15 16" dropped)
    assert [w.tokens.tolist() for w in wins] == [[1, 5, 6, 7, 1], [1, 8, 9, 10, 11], [1, 12, 13, 14, 1]]
    assert [w.doc_ids.tolist() for w in wins] == [[0, 0, 0, 0, 2], [2, 2, 2, 2, 2], [2, 2, 2, 2, 3]]
    assert [w.index for w in wins] == [0, 1, 2]
    assert len(list(pack_windows([docs], tokenize, seq_len=5, bos_id=1, max_windows=2))) == 2
    # A window that opens on a document uses that document's own BOS (no doubled BOS).
    w = list(pack_windows([[(0, "5 6 7 8"), (1, "9 10 11 12")]], tokenize, seq_len=5, bos_id=1))
    assert [x.tokens.tolist() for x in w] == [[1, 5, 6, 7, 8], [1, 9, 10, 11, 12]]


# -- round trip --------------------------------------------------------------------------------------

def test_round_trip_equals_direct_forward_hook(lm, corpus, tmp_path):
    out = tmp_path / "acts.parquet"
    man = trace(cfg_for(corpus, out), progress=False, loaded=lm)
    store = ActivationStore(out)
    assert store.layers == [0, 2] and store.hook_names == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    wins = list(store.windows())
    assert len(wins) == man["n_windows"] > 10
    for k in (0, 1, len(wins) // 2, len(wins) - 1):
        seq_id, toks, rows = wins[k]
        assert toks[0] == lm.tokenizer.bos_token_id
        for layer in (0, 2):
            want = hook_forward(lm, toks.tolist(), layer).float()
            got = store.read_rows(layer, rows)
            torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)  # float16 storage
    # The stored tokens are the corpus' tokens: drop every BOS and they read back as the documents.
    tok = lm.tokenizer
    words = [w for line in corpus.read_text().splitlines() for w in line.split()]
    ids = store.token_ids()
    text = [tok.convert_ids_to_tokens(int(i)) for i in ids if i != tok.bos_token_id]
    assert text == words[:len(text)] and len(text) > len(words) - SEQ - 5


def test_float32_storage_is_exact_and_hidden_states_agree(lm, corpus, tmp_path):
    out = tmp_path / "f32.parquet"
    trace(cfg_for(corpus, out, store_dtype="float32", layers=[1]), progress=False, loaded=lm)
    store = ActivationStore(out)
    seq_id, toks, rows = next(iter(store.windows()))
    with torch.no_grad():
        hs = lm.model(torch.tensor([toks.tolist()]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(store.read_rows(1, rows), hs[2][0], atol=1e-5, rtol=1e-5)


def test_layer_all_and_manifest(lm, corpus, tmp_path):
    out = tmp_path / "all.parquet"
    man = trace(cfg_for(corpus, out, layers="all"), progress=False, loaded=lm)
    assert man["layers"] == [0, 1, 2] and man["d_model"] == 32 and man["seq_len"] == SEQ
    assert man["config_hash"] == lm.config_hash and man["model_id"] == lm.model_id
    assert man["vocab_size"] == lm.vocab_size and man["dtype"] == "float16" and man["complete"]
    table, _ = shard_table(out)
    assert table.column_names == ["seq_id", "pos", "doc_id", "token_id", "blocks.0.hook_resid_post",
                                  "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    assert str(table.schema.field("blocks.1.hook_resid_post").type) == "fixed_size_binary[64]"
    assert man["n_tokens"] == table.num_rows == man["n_windows"] * SEQ
    for s in man["shards"]:
        assert pq.read_metadata(out / s["file"]).num_rows == s["rows"]
    # Every position of every window, BOS included, and window ids run 0..n-1 in order.
    seq, pos = table.column("seq_id").to_numpy(), table.column("pos").to_numpy()
    assert (seq == np.repeat(np.arange(man["n_windows"]), SEQ)).all()
    assert (pos == np.tile(np.arange(SEQ), man["n_windows"])).all()
    assert (table.column("token_id").to_numpy()[pos == 0] == lm.tokenizer.bos_token_id).all()
    # doc_id is the input line index: blank lines (every 7th from 3) never appear.
    docs = set(table.column("doc_id").to_numpy().tolist())
    assert not any(d % 7 == 3 for d in docs) and max(docs) < 120


def test_max_tokens_and_input_formats_agree(lm, corpus, tmp_path):
    lines = corpus.read_text().splitlines()
    jl = tmp_path / "docs.jsonl"
    jl.write_text("".join(json.dumps({"body": t, "n": i}) + "\n" for i, t in enumerate(lines)))
    pqf = tmp_path / "docs.parquet"
    import pyarrow as pa

    pq.write_table(pa.table({"id": list(range(len(lines))), "text": lines}), pqf)
    tables = []
    for name, kw in [("txt", {}), ("jsonl", dict(data=[str(jl)], text_field="body")), ("pq", dict(data=[str(pqf)]))]:
        man = trace(cfg_for(corpus, tmp_path / f"{name}.parquet", max_tokens=5 * SEQ + 3, **kw),
                    progress=False, loaded=lm)
        assert man["n_tokens"] == 5 * SEQ
        tables.append(shard_table(tmp_path / f"{name}.parquet")[0])
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])


# -- interruption, resume, parallel slices ----------------------------------------------------------

def _interrupt_on_call(lm, monkeypatch, n):
    calls = {"n": 0}
    real = lm.model.forward

    def forward(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(lm.model, "forward", forward)
    return calls


def test_resume_after_interrupt_gives_the_same_rows(lm, corpus, tmp_path, monkeypatch):
    whole = tmp_path / "whole.parquet"
    trace(cfg_for(corpus, whole), progress=False, loaded=lm)
    out = tmp_path / "cut.parquet"
    _interrupt_on_call(lm, monkeypatch, 6)  # 4 windows a call, 8 a shard: dies inside the 3rd shard
    with pytest.raises(KeyboardInterrupt):
        trace(cfg_for(corpus, out), progress=False, loaded=lm)
    monkeypatch.undo()
    man = json.loads((out / "manifest.json").read_text())
    files = sorted(p.name for p in out.iterdir())
    assert files == ["manifest.json"] + [s["file"] for s in man["shards"]]  # no temp file, all listed
    assert len(man["shards"]) == 2 and not man["complete"]
    for s in man["shards"]:
        assert pq.read_metadata(out / s["file"]).num_rows == s["rows"]
    # Without --resume the directory is refused; with it only the missing windows are recomputed.
    with pytest.raises(TuiwbError, match="already exists.*`resume=True`"):
        trace(cfg_for(corpus, out), progress=False, loaded=lm)
    kept = {s["file"]: (out / s["file"]).stat().st_mtime_ns for s in man["shards"]}
    calls = _interrupt_on_call(lm, monkeypatch, -1)
    man2 = trace(cfg_for(corpus, out, resume=True), progress=False, loaded=lm)
    assert man2["complete"] and calls["n"] == -(-(man2["n_windows"] - 16) // 4)
    assert all((out / f).stat().st_mtime_ns == t for f, t in kept.items())
    assert shard_table(out)[0].equals(shard_table(whole)[0])


def test_resume_adopts_a_shard_renamed_just_before_a_kill(lm, corpus, tmp_path, monkeypatch):
    out = tmp_path / "a.parquet"
    trace(cfg_for(corpus, out), progress=False, loaded=lm)
    ref = shard_table(out)[0]
    man = json.loads((out / "manifest.json").read_text())
    man["shards"] = man["shards"][:-1]  # killed between the rename and the manifest update ...
    (out / "manifest.json").write_text(json.dumps(man))
    (out / ".part-000099.parquet.tmp").write_bytes(b"half a shard")  # ... and a stale temp file
    calls = _interrupt_on_call(lm, monkeypatch, -1)
    man2 = trace(cfg_for(corpus, out, resume=True), progress=False, loaded=lm)
    assert calls["n"] == 0 and man2["complete"]
    assert not (out / ".part-000099.parquet.tmp").exists()
    assert shard_table(out)[0].equals(ref)


def test_shard_halves_merge_to_the_whole(lm, ckpt, corpus, tmp_path):
    whole = tmp_path / "whole.parquet"
    trace(cfg_for(corpus, whole), progress=False, loaded=lm)
    out = tmp_path / "par.parquet"
    # Two slices at once, each with its own model (as two processes would), into one directory.
    models = [lm, load_model(str(ckpt))]
    errors = []

    def run(i):
        try:
            trace(cfg_for(corpus, out, shard=f"{i}/2"), progress=False, loaded=models[i])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    table, man = shard_table(out)
    assert man["complete"] and {s["chunk"] % 2 for s in man["shards"]} == {0, 1}
    assert table.equals(shard_table(whole)[0])
    # A slice that already has shards there is refused without --resume/--overwrite.
    with pytest.raises(TuiwbError, match="slice 1/2"):
        trace(cfg_for(corpus, out, shard="1/2"), progress=False, loaded=lm)
    man3 = trace(cfg_for(corpus, out, shard="1/2", overwrite=True), progress=False, loaded=lm)
    assert man3["complete"] and shard_table(out)[0].equals(table)


def test_overwrite_replaces(lm, corpus, tmp_path):
    out = tmp_path / "o.parquet"
    trace(cfg_for(corpus, out, layers=[1]), progress=False, loaded=lm)
    man = trace(cfg_for(corpus, out, overwrite=True), progress=True, loaded=lm)
    assert man["layers"] == [0, 2] and ActivationStore(out).layers == [0, 2]


def test_resume_refuses_different_settings(lm, corpus, tmp_path):
    out = tmp_path / "r.parquet"
    trace(cfg_for(corpus, out), progress=False, loaded=lm)
    with pytest.raises(TuiwbError, match="different seq_len"):
        trace(cfg_for(corpus, out, seq_len=8, resume=True), progress=False, loaded=lm)


# -- errors: one line, exit 2, nothing left behind ---------------------------------------------------

@pytest.mark.parametrize("case", ["layer", "missing", "empty", "short", "badjson", "field", "shard", "suffix",
                                  "binary"])
def test_errors_exit_2_and_leave_nothing(ckpt, corpus, tmp_path, cli_error, case):
    out = tmp_path / "x.parquet"
    data, extra = str(corpus), []
    if case == "layer":
        extra = ["--layer", "3"]
    elif case == "missing":
        data = str(tmp_path / "nope.txt")
    elif case == "empty":
        (tmp_path / "e.txt").write_text("\n  \n\n")
        data = str(tmp_path / "e.txt")
    elif case == "short":
        (tmp_path / "s.txt").write_text("the cat\nruns\n")
        data = str(tmp_path / "s.txt")
    elif case == "badjson":  # found only while streaming, after shards were written (docs stream 256 at a time)
        lines = corpus.read_text().splitlines() * 4
        (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines) + "{oops\n")
        data = str(tmp_path / "b.jsonl")
    elif case == "field":
        (tmp_path / "f.jsonl").write_text('{"body": "the cat"}\n')
        data = str(tmp_path / "f.jsonl")
    elif case == "shard":
        extra = ["--shard", "2/2"]
    elif case == "suffix":
        (tmp_path / "d.csv").write_text("a,b\n")
        data = str(tmp_path / "d.csv")
    elif case == "binary":
        (tmp_path / "g.txt").write_bytes(b"the cat\n\xff\xfe\x00garbage\n")
        data = str(tmp_path / "g.txt")
    err = cli_error("trace", "--no-progress", "--model", ckpt, "--layer", "0", *extra, "--data", data, "--out", out,
                    "--seq-len", SEQ, "--windows-per-shard", "2")
    expect = {"layer": r"layers 0\.\.2", "missing": "does not exist", "empty": "empty", "short": "no tokens after packing",
              "badjson": "line 481 is not valid JSON", "field": "--text-field", "shard": "I/N", "suffix": "unsupported",
              "binary": "not UTF-8"}
    assert __import__("re").search(expect[case], err), err
    if case == "badjson":  # found after whole shards were written: they stay, listed, for --resume
        man = json.loads((out / "manifest.json").read_text())
        assert man["shards"] and not man["complete"] and "--resume" in err
        assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] + sorted(s["file"] for s in man["shards"])
    else:
        assert not out.exists()


def test_existing_out_is_refused_and_left_alone(ckpt, corpus, tmp_path, cli):
    out = tmp_path / "x.parquet"
    args = ["trace", "--no-progress", "--model", ckpt, "--layer", "1", "--data", corpus, "--out", out,
            "--seq-len", SEQ]
    assert cli(*args)[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc, _, err = cli(*args)
    assert rc == 2 and "already exists" in err and "--overwrite" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.md").write_text("mine")
    rc, _, err = cli(*args[:-4], "--out", other, "--overwrite")
    assert rc == 2 and "not a tuiwb activation directory" in err and (other / "keep.md").exists()


@pytest.mark.parametrize("kw, msg", [
    (dict(layers=[]), "no layers"), (dict(layers=["x"]), "not a layer index"), (dict(seq_len=1), "at least 2"),
    (dict(max_tokens=3), "less than one window"), (dict(store_dtype="bfloat16"), "`store_dtype`"),
    (dict(resume=True, overwrite=True), "contradict"), (dict(shard="1/1"), "invalid"), (dict(shard="a"), "malformed"),
    (dict(data=[]), "no input data"), (dict(out=""), "no output"),
])
def test_config_validation(kw, msg):
    with pytest.raises(TuiwbError, match=msg):
        TraceConfig(**{**dict(data=["x.txt"], out="o.parquet", layers=[0]), **kw})
    cfg = TraceConfig(data="x.txt", out="o.parquet", layers=["all", 1], shard="1/3")
    assert cfg.data == ["x.txt"] and cfg.layers == ["all", 1] and cfg.shard == (1, 3)
