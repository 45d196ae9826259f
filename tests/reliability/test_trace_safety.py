"""A trace never loses what it already wrote: concurrent runs, failures mid-run, --overwrite."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuiwb.trace import shards as fmt

TRACE = ["trace", "--layer", "0", "--layer", "2", "--seq-len", "16", "--batch-size", "2",
         "--windows-per-shard", "4", "--no-progress"]


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _fail_after(monkeypatch, n_flushes: int, exc: BaseException):
    """Make the shard writer fail on its n-th row-group flush (a full disk, say) — no root tricks."""
    real = fmt.ShardWriter._flush
    calls = {"n": 0}

    def flush(self):
        calls["n"] += 1
        if calls["n"] == n_flushes:
            raise exc
        return real(self)

    monkeypatch.setattr(fmt.ShardWriter, "_flush", flush)


def test_a_second_trace_into_a_live_output_is_refused_and_the_first_finishes(ckpt, corpus, tmp_path):
    out = tmp_path / "acts.parquet"
    slow = (f"import sys, time\nsys.argv = ['tuiwb']\n"
            "import tuiwb.trace.tracer as tr\n"
            "real = tr._Recorder.forward\n"
            "def forward(self, ids):\n    time.sleep(0.05)\n    return real(self, ids)\n"
            "tr._Recorder.forward = forward\n"
            "from tuiwb.cli import main\n"
            f"sys.exit(main({[*TRACE, '--model', str(ckpt), '--data', str(corpus), '--out', str(out)]!r}))\n")
    first = subprocess.Popen([sys.executable, "-c", slow], stderr=subprocess.PIPE, text=True)
    lock = tmp_path / ".acts.parquet.writer-0of1.lock"
    deadline = time.monotonic() + 60
    while not (out / "manifest.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the first run is live and has written a whole shard
    assert (out / "manifest.json").exists(), first.communicate()[1]
    for extra in ([], ["--resume"], ["--overwrite"]):
        second = subprocess.run([sys.executable, "-m", "tuiwb", *TRACE, "--model", str(ckpt), "--data", str(corpus),
                                 "--out", str(out), *extra], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    assert first.wait(timeout=300) == 0, first.stderr.read()
    man = json.loads((out / "manifest.json").read_text())
    assert man["complete"] and sorted(p.name for p in out.iterdir()) == ["manifest.json", *[s["file"] for s in man["shards"]]]
    assert lock.read_text().strip() == str(first.pid)


def test_parallel_slices_each_hold_their_own_lock(ckpt, corpus, tmp_path, cli):
    from tuiwb.locks import WriterLock

    out = tmp_path / "acts.parquet"
    with WriterLock(tmp_path / ".acts.parquet.writer-1of2.lock", "slice 1"):  # slice 1 is "running"
        code, _, err = cli(*TRACE, "--model", ckpt, "--data", corpus, "--out", out, "--shard", "0/2")
        assert code == 0, err  # another slice of the same N is no conflict
        code, _, err = cli(*TRACE, "--model", ckpt, "--data", corpus, "--out", out, "--shard", "1/2")
        assert code == 2 and "another tuiwb run" in err
        code, _, err = cli(*TRACE, "--model", ckpt, "--data", corpus, "--out", tmp_path / "whole.parquet")
        assert code == 0, err  # another output is no conflict either
        code, _, err = cli(*TRACE, "--model", ckpt, "--data", corpus, "--out", out, "--overwrite")
        assert code == 2 and "another tuiwb trace" in err  # the whole directory overlaps every slice


def test_a_disk_full_failure_keeps_whole_shards_and_resume_finishes_the_same(ckpt, corpus, tmp_path, cli,
                                                                               monkeypatch):
    whole = tmp_path / "whole.parquet"
    assert cli(*TRACE, "--model", ckpt, "--data", corpus, "--out", whole)[0] == 0
    out = tmp_path / "cut.parquet"
    _fail_after(monkeypatch, 9, OSError(errno.ENOSPC, "No space left on device", str(out / ".part.tmp")))
    code, _, err = cli(*TRACE, "--model", ckpt, "--data", corpus, "--out", out)
    assert code == 2 and "no space left" in err and "--resume" in err and "internal error" not in err, err
    assert "MB free" in err  # how much a shard needs
    assert len(err.splitlines()) == 1
    man = json.loads((out / "manifest.json").read_text())
    assert len(man["shards"]) >= 2 and not man["complete"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", *sorted(s["file"] for s in man["shards"])]
    monkeypatch.undo()
    assert cli(*TRACE, "--model", ckpt, "--data", corpus, "--out", out, "--resume")[0] == 0
    a, b = _files(whole), _files(out)
    assert [k for k in a if k != "manifest.json"] == [k for k in b if k != "manifest.json"]
    assert all(a[k] == b[k] for k in a if k != "manifest.json")  # byte-identical shards


def test_overwrite_keeps_the_old_trace_until_the_new_one_is_whole(ckpt, corpus, tmp_path, cli, monkeypatch):
    out = tmp_path / "acts.parquet"
    assert cli(*TRACE, "--model", ckpt, "--data", corpus, "--out", out)[0] == 0
    before = _files(out)
    _fail_after(monkeypatch, 5, OSError(errno.ENOSPC, "No space left on device"))
    code, _, err = cli(*TRACE, "--model", ckpt, "--data", corpus, "--out", out, "--overwrite", "--seq-len", "8")
    assert code == 2 and "restored unchanged" in err, err
    assert _files(out) == before  # the old trace is back, byte for byte
    assert not list(tmp_path.glob(".acts.parquet.old-*"))
    monkeypatch.undo()
    assert cli(*TRACE, "--model", ckpt, "--data", corpus, "--out", out, "--overwrite", "--seq-len", "8")[0] == 0
    assert json.loads((out / "manifest.json").read_text())["seq_len"] == 8
    assert not list(tmp_path.glob(".acts.parquet.old-*"))


def test_an_unwritable_out_fails_before_the_model_loads(ckpt, corpus, tmp_path, cli):
    for bad in ("/proc/tuiwb-x.parquet", tmp_path / "file.txt" / "acts.parquet"):
        (tmp_path / "file.txt").write_text("x")
        t0 = time.perf_counter()
        code, _, err = cli(*TRACE, "--model", tmp_path / "no-such-model", "--data", corpus, "--out", bad)
        assert code == 2 and "not writable" in err or "is a file" in err or "not a directory" in err, err
        assert "no-such-model" not in err and time.perf_counter() - t0 < 5
