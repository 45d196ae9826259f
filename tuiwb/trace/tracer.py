"""Record residual-stream activations into a directory of Parquet shards (``tuiwb trace``).

Pipeline: text files → documents (``tuiwb.data``) → BOS-prefixed token windows of ``seq_len`` →
batched forward passes with a forward hook on each recorded block → a bounded queue → a writer
thread that appends row groups to the current shard. The forward stops right after the deepest
recorded block (the rest of the model and the unembedding are never computed).

Layout (``tuiwb.shards`` defines it, ``tuiwb.store`` reads it)::

    acts.parquet/
      manifest.json            model, layers, d_model, dtype, seq_len, counts, shard list
      part-000000.parquet      windows [0, W): one row per token, every position, BOS included
      part-000001.parquet      windows [W, 2W) ...

Windows are numbered globally and cut into fixed *chunks* of ``windows_per_shard``; chunk ``c`` is
shard file ``part-{c:06d}.parquet``. ``--shard I/N`` records the chunks with ``c % N == I``, so N
processes write disjoint files into one directory and the union equals an unsharded run exactly
(every process tokenizes the whole input, which is cheap next to the forward passes). A shard is
written under a hidden temporary name and renamed when complete; the manifest is then updated under
a lock (atomic replace), so after Ctrl-C or a kill the directory holds only whole shards, listed.
``--resume`` skips the chunks already listed.

Activation columns are ``fixed_size_binary(d_model * itemsize)``: the raw little-endian float16 (or
float32) bytes of each row, uncompressed, no dictionary. Measured here that writes ~10× faster than
``fixed_size_list<float16>`` and reads back zero-copy into ``np.ndarray [n, d_model]``.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tuiwb.trace import shards as fmt
from tuiwb.trace.sources import open_sources, iter_documents
from tuiwb.trace.config import TraceConfig
from tuiwb.trace.windows import pack_windows
from tuiwb.atomic import check_writable
from tuiwb.errors import TuiwbError, warn
from tuiwb.locks import WriterLock, holder, is_held
from tuiwb.model.hooks import hidden
from tuiwb.progress import as_progress

ROW_GROUP_BYTES = 4 << 20
"""Target activation bytes per Parquet row group (at most 16,384 rows): the unit the writer buffers
and the reader decodes. Small enough that the writer's memory (~3 row groups) is reached within
the first few thousand windows and that one explorer lookup decodes little; large enough that
per-group overhead is noise."""
SHARD_BYTES = 256 << 20
"""Target activation bytes per shard file: the unit of --resume and of --shard parallelism."""


def resolve_layers(layers, n_layers: int) -> list[int]:
    """``[3, "all", 1]`` → sorted unique block indices, each checked against the model's range."""
    out: set[int] = set()
    for x in layers:
        if x == "all":
            out.update(range(n_layers))
        elif not 0 <= x < n_layers:
            raise TuiwbError(f"layer {x} is out of range: this model has layers 0..{n_layers - 1}")
        else:
            out.add(x)
    return sorted(out)


def trace(cfg: TraceConfig, progress: bool = True, loaded=None) -> dict:
    """Record activations per ``cfg``; returns the manifest (also written to ``out/manifest.json``).

    ``loaded`` reuses a ``LoadedModel`` the caller already holds (its hooks are removed afterwards).
    """
    sources = open_sources(cfg.data, cfg.text_field)
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise TuiwbError(f"`out` {out} exists and is not a directory: choose another name")
    check_writable(out, "`out`")
    with _writer_lock(out, cfg.shard):  # one writer per output (per slice): a second run touches nothing
        _preflight(out, cfg)
        if loaded is None:
            if not cfg.model:
                raise TuiwbError("no model: pass `model` (a checkpoint directory or hub id)")
            from tuiwb.model.loading import load_model

            loaded = load_model(cfg.model, quant=cfg.quant, device=cfg.device, dtype=cfg.model_dtype,
                                trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle,
                                device_map=cfg.device_map)
        plan = _Plan.make(cfg, loaded, sources, out)
        job = _Job(cfg, loaded, sources, out, plan)
        return job.run(progress)


def _writer_lock(out: Path, shard: tuple[int, int]) -> WriterLock:
    """The lock of this slice of ``out`` (next to it: ``out`` itself may not exist yet).

    Slices of one N run in parallel, each under its own lock; a whole-directory run (N = 1) and a
    slice run exclude each other, since their chunks overlap.
    """
    i, n = shard
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = WriterLock(out.parent / f".{out.name}.writer-{i}of{n}.lock", f"`out` {out}")
    others = (out.parent.glob(f".{out.name}.writer-*of*.lock") if n == 1
              else [out.parent / f".{out.name}.writer-0of1.lock"])
    for other in others:
        if other != lock.path and is_held(other):
            raise TuiwbError(f"another tuiwb trace (pid {holder(other)}) is writing `out` {out}: wait for it "
                             "to finish, or write elsewhere")
    return lock


def _preflight(out: Path, cfg: TraceConfig) -> None:
    """Refuse an existing --out before spending time on the model."""
    if out.exists() and not out.is_dir():
        raise TuiwbError(f"`out` {out} exists and is not a directory: choose another name")
    if not out.exists() or not any(out.iterdir()):
        return
    is_trace = (out / fmt.MANIFEST).is_file() or all(fmt.is_shard_file(p.name) for p in out.iterdir())
    if not is_trace:
        raise TuiwbError(f"`out` {out} exists and is not a tuiwb activation directory: choose another name")
    if cfg.resume or cfg.overwrite or cfg.shard[1] > 1:
        return  # a parallel slice may join a directory another slice created (checked after loading)
    raise TuiwbError(f"`out` {out} already exists: pass `resume=True` to continue it or `overwrite=True` to replace it")


@dataclass
class _Plan:
    """Everything derived from the config + model before recording: the manifest header."""

    layers: list[int]
    header: dict
    windows_per_shard: int
    row_group_windows: int
    bos_id: int | None

    @classmethod
    def make(cls, cfg: TraceConfig, loaded, sources, out: Path) -> "_Plan":
        from tuiwb import __version__

        layers = resolve_layers(cfg.layers, loaded.n_layers)
        if loaded.max_positions is not None and cfg.seq_len > loaded.max_positions:
            raise TuiwbError(f"`seq_len` {cfg.seq_len} exceeds the model's context of {loaded.max_positions}: "
                             "use a smaller `seq_len`")
        tok = loaded.tokenizer
        bos_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        itemsize = np.dtype(cfg.store_dtype).itemsize
        row_bytes = loaded.d_model * itemsize * len(layers)
        rg = max(1, min(16384, ROW_GROUP_BYTES // row_bytes) // cfg.seq_len)
        wps = cfg.windows_per_shard
        if wps is None and cfg.resume and (out / fmt.MANIFEST).is_file():
            wps = fmt.read_manifest(out).get("windows_per_shard")  # keep the chunking of the run resumed
        if wps is None:
            wps = rg * max(1, SHARD_BYTES // (rg * cfg.seq_len * row_bytes))
        header = {
            "format": fmt.FORMAT, "format_version": fmt.FORMAT_VERSION, "tuiwb_version": __version__,
            "model_id": loaded.model_id, "config_hash": loaded.config_hash, "weights_fingerprint": loaded.fingerprint,
            "model_class": type(loaded.model).__name__, "n_layers_model": loaded.n_layers,
            "layers": layers, "hook_names": [fmt.column_name(L) for L in layers],
            "d_model": loaded.d_model, "dtype": cfg.store_dtype, "storage": f"fixed_size_binary({loaded.d_model * itemsize})",
            "seq_len": cfg.seq_len, "vocab_size": loaded.vocab_size, "bos_token_id": bos_id,
            "special_token_ids": sorted(int(i) for i in getattr(tok, "all_special_ids", []) if i is not None),
            "windows_per_shard": int(wps), "max_tokens": cfg.max_tokens, "text_field": cfg.text_field,
            "data": [s.fingerprint() for s in sources],
        }
        return cls(layers, header, int(wps), min(rg, int(wps)), bos_id)


class _Job:
    """One run of the recorder: owns the output directory state, the writer thread and the loop."""

    def __init__(self, cfg: TraceConfig, loaded, sources, out: Path, plan: _Plan):
        self.cfg, self.loaded, self.sources, self.out, self.plan = cfg, loaded, sources, out, plan
        self.slice_i, self.slice_n = cfg.shard
        self.was_empty_dir = out.is_dir() and not any(out.iterdir())
        self.created = not out.exists() or self.was_empty_dir
        self.claimed = False
        self.replaced: Path | None = None  # the previous `out`, moved aside by `overwrite` until we succeed
        self.done = self._done_chunks()

    # -- output directory -------------------------------------------------------------------------
    def _mine(self, chunk: int) -> bool:
        return chunk % self.slice_n == self.slice_i

    def _done_chunks(self) -> set[int]:
        """Chunks of this slice already recorded (--resume), after checking the directory matches.

        An existing directory is first reconciled (stale temp files of this slice removed, a shard
        renamed just before a kill adopted), so the manifest lists exactly the whole shards.
        """
        if self.created or (self.cfg.overwrite and self.slice_n == 1):
            return set()  # nothing there yet / replaced wholesale at the first write
        with fmt.dir_lock(self.out):
            man = fmt.reconcile(self.out, self.plan.header, self._mine)
        mine = {s["chunk"] for s in man["shards"] if self._mine(s["chunk"])}
        if self.cfg.overwrite:
            return set()  # this slice's shards are dropped at the first write
        if mine and not self.cfg.resume:
            raise TuiwbError(f"`out` {self.out} already holds shards of slice {self.slice_i}/{self.slice_n}: "
                             "pass `resume=True` to continue or `overwrite=True` to replace them")
        return mine

    def _claim(self) -> None:
        """Make the directory ours just before the first write (so errors before it leave no trace)."""
        if self.claimed:
            return
        self.claimed = True
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with fmt.dir_lock(self.out):
            if self.cfg.overwrite and self.slice_n == 1 and self.out.exists() and not self.was_empty_dir:
                # Keep the old trace until this one is complete: it comes back if this run fails.
                self.replaced = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
                os.replace(self.out, self.replaced)
                self.created = True
            self.out.mkdir(exist_ok=True)
            if self.cfg.overwrite and self.slice_n > 1:
                fmt.reconcile(self.out, self.plan.header, self._mine, drop_mine=True)

    def commit_shard(self, entry: dict) -> None:
        """Called by the writer thread after a shard file has been renamed into place."""
        fmt.update_manifest(self.out, self.plan.header, lambda m: fmt.add_shard(m, entry))

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, progress: bool) -> dict:
        import torch

        cfg, plan = self.cfg, self.plan
        writer = fmt.ShardWriter(self.out, plan.header, plan.row_group_windows, self.commit_shard)
        pipe = fmt.WriterThread(writer)
        hooks = _Recorder(self.loaded, plan.layers, getattr(torch, cfg.store_dtype))
        counter = _TokenCounter(self.loaded.tokenizer)
        lines = [s.n_lines for s in self.sources]
        total = (cfg.max_tokens // cfg.seq_len * cfg.seq_len if cfg.max_tokens is not None
                 else (sum(lines) if None not in lines else None))
        bar = as_progress(progress).task("trace", total, unit="tok" if cfg.max_tokens else "lines")
        self.recorded, self.t0 = 0, time.perf_counter()
        max_windows = cfg.max_tokens // cfg.seq_len if cfg.max_tokens else None
        n_windows = 0
        try:
            with bar, self.loaded.hooks(hooks.hooks()):
                batch: list = []
                windows = pack_windows(iter_documents(self.sources, batch=256), counter, cfg.seq_len,
                                       plan.bos_id, max_windows)
                for win in windows:
                    n_windows += 1
                    chunk = win.index // plan.windows_per_shard
                    if not self._mine(chunk) or chunk in self.done:
                        continue
                    self._claim()
                    batch.append(win)
                    if len(batch) == cfg.batch_size:
                        self._step(batch, hooks, pipe, bar)
                        batch = []
                if batch:
                    self._step(batch, hooks, pipe, bar)
                pipe.close()
            if n_windows == 0 and counter.n_docs == 0:
                raise TuiwbError("the input data holds no text (every document is blank): check `data` "
                                 "and `text_field`")
            if n_windows == 0:
                raise TuiwbError(f"no tokens after packing: the data holds {counter.n_tokens} tokens in "
                                 f"{counter.n_docs} documents, less than one window of `seq_len` {cfg.seq_len}: "
                                 "give more text or a smaller `seq_len`")
            self._claim()
            man = fmt.update_manifest(self.out, plan.header, lambda m: fmt.set_total(m, n_windows))
        except BaseException as e:
            interrupted = isinstance(e, (KeyboardInterrupt, SystemExit))
            pipe.abort(flush=interrupted)
            note = self._cleanup()
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                e.add_note(f"each shard needs about {self._shard_bytes() / 1e6:,.0f} MB free")
            if note:
                e.add_note(note)
            raise
        if self.replaced is not None:
            shutil.rmtree(self.replaced, ignore_errors=True)  # the new trace is whole: the old one can go
        return man

    def _step(self, batch, hooks, pipe, bar) -> None:
        import torch

        ids = torch.from_numpy(np.stack([w.tokens for w in batch])).long()  # [batch, seq_len]
        acts = hooks.forward(ids)  # {layer: [batch, seq_len, d_model] numpy}
        pipe.put((np.array([w.index for w in batch], np.int64),
                  np.stack([w.tokens for w in batch]),  # [batch, seq_len]
                  np.stack([w.doc_ids for w in batch]),  # [batch, seq_len]
                  acts))
        # Progress is the position in the whole input (other slices' windows count as passed).
        done = (batch[-1].index + 1) * self.cfg.seq_len if self.cfg.max_tokens else int(batch[-1].doc_ids[-1]) + 1
        self.recorded += len(batch) * self.cfg.seq_len
        mb = f"{pipe.writer.bytes_written / 1e6:,.1f} MB written"
        if self.cfg.max_tokens:  # the bar counts tokens already
            bar.update(done, info=mb)
        else:  # the bar counts input lines: say the tokens too
            rate = self.recorded / max(time.perf_counter() - self.t0, 1e-9)
            bar.update(done, info=f"{self.recorded:,} tok · {rate:,.0f} tok/s · {mb}")

    def _shard_bytes(self) -> int:
        h = self.plan.header
        row = 24 + h["d_model"] * np.dtype(h["dtype"]).itemsize * len(h["layers"])  # 4 id columns + activations
        return int(self.plan.windows_per_shard * h["seq_len"] * row)

    def _cleanup(self) -> str | None:
        """After a failure: every whole shard stays, listed in the manifest, for ``resume``; what is
        said about it is returned. A replaced trace comes back instead of a half-made new one."""
        if not self.claimed or not self.out.exists():
            return None
        if self.replaced is not None:
            shutil.rmtree(self.out, ignore_errors=True)
            os.replace(self.replaced, self.out)
            return f"the previous trace in {self.out} was restored unchanged"
        with fmt.dir_lock(self.out):
            man = fmt.reconcile(self.out, self.plan.header, self._mine)  # drops our temp file, lists shards
        mine = [s for s in man["shards"] if self._mine(s["chunk"])]
        if not mine and self.created and not any(self.out.iterdir()):
            self.out.rmdir()
            if self.was_empty_dir:
                self.out.mkdir()  # it was an empty directory the user made: leave it as found
            return None
        return (f"{len(mine)} whole shard(s) are kept in {self.out}: fix the cause and rerun with "
                "`resume=True` to record only the rest")


class _TokenCounter:
    """The tokenize callable for ``pack_windows``, counting tokens and documents for error messages,
    and warning once, early, when most of the text is unknown to the tokenizer (wrong data or model)."""

    UNK_WARN = 0.5

    def __init__(self, tokenizer):
        self.tokenizer, self.n_tokens, self.n_docs, self.n_unk = tokenizer, 0, 0, 0
        self.unk = getattr(tokenizer, "unk_token_id", None)
        self.warned = False

    def __call__(self, texts: list[str]) -> list[list[int]]:
        ids = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        self.n_docs += sum(1 for x in ids if x)
        self.n_tokens += sum(len(x) for x in ids)
        if self.unk is not None:
            self.n_unk += sum(x.count(self.unk) for x in ids)
            if not self.warned and self.n_tokens and self.n_unk >= self.UNK_WARN * self.n_tokens:
                self.warned = True
                warn(f"{self.n_unk / self.n_tokens:.0%} of the tokens of `data` so far are unknown to the "
                     "tokenizer (<unk>): is this the right data for this model?")
        return ids


class _Recorder:
    """Forward hooks on the recorded blocks; ``forward(ids)`` returns their outputs as numpy."""

    def __init__(self, loaded, layers: list[int], store_dtype):
        self.loaded, self.layers, self.store_dtype = loaded, layers, store_dtype
        self.captured: dict = {}

    def hooks(self) -> list:
        def grab(layer):
            def hook(mod, inputs, output):
                self.captured[layer] = hidden(output).detach().to(self.store_dtype)  # [batch, pos, d_model]
            return hook
        return [(layer, grab(layer)) for layer in self.layers]

    def forward(self, ids) -> dict[int, np.ndarray]:
        import torch

        self.captured = {}
        with torch.inference_mode():
            self.loaded.run_to(ids.to(self.loaded.device), max(self.layers))  # nothing deeper is computed
        return {L: self.captured[L].cpu().numpy() for L in self.layers}  # each [batch, seq_len, d_model]
