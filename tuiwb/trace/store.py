"""Read an activation directory back: shuffled training batches, rows, token contexts.

``ActivationStore(path)`` never loads the activations whole. It memory-maps the shard files and
decodes one Parquet row group at a time (a row group is a run of whole windows, ~4 MB of
activations). Only the small per-row metadata (token id, document id: 12 bytes a row) is loaded in
full, lazily, for splitting and masking.

Global row ids run ``0 .. n_rows-1`` over the shards in window order; every window is stored whole,
so a row's window and position follow from arithmetic and ``context()`` never searches.

Shuffling trades randomness for memory: ``batches(shuffle=True)`` visits row groups in a random
order and mixes them in a bounded shuffle buffer (``shuffle_buffer_mb``, default 256 MB of float16
rows; half of it is emitted, permuted, each time it fills). Rows from one row group are neighbours
in the text, so with a buffer much smaller than the dataset a batch still draws from
``buffer / row group`` (≥ 64 by default) different places. When the whole dataset fits in the
buffer the shuffle is a full permutation.

Train/held-out split is by document: the ``round(val_fraction * n_docs)`` documents with the smallest
hash of their ``doc_id`` are held out (at least one when ``val_fraction > 0`` and there are two or
more). It is deterministic and needs no stored state; every row of a document is on the same side.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tuiwb.trace import shards as fmt
from tuiwb.errors import TuiwbError

SPLITS = ("train", "heldout", "all")


class ActivationStore:
    """A traced activation directory (``NAME.parquet/``), read lazily."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise TuiwbError(f"activation directory {path} does not exist: make one with `tuiwb trace`")
        self.manifest: dict = fmt.read_manifest(self.path)
        m = self.manifest
        self.layers: list[int] = list(m["layers"])
        self.hook_names: list[str] = list(m["hook_names"])
        self.d_model: int = int(m["d_model"])
        self.seq_len: int = int(m["seq_len"])
        self.model_id: str = m["model_id"]
        self.config_hash: str = m["config_hash"]
        self.fingerprint: list[float] | None = m.get("weights_fingerprint")
        self.identity: str = fmt.manifest_identity(m)
        """What was recorded, as a hash (``shards.manifest_identity``): equal for equal traces anywhere."""
        self.dtype = np.dtype(m["dtype"])
        self.special_token_ids: list[int] = list(m.get("special_token_ids", []))
        shards = sorted(m["shards"], key=lambda s: s["seq_start"])
        self._files = [self.path / s["file"] for s in shards]
        for f in self._files:
            if not f.is_file():
                raise TuiwbError(f"{self.path} lists {f.name} but it is missing: re-run `tuiwb trace --resume`")
        rows = [int(s["rows"]) for s in shards]
        self._row_start = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)]).astype(np.int64)  # [shards+1]
        self._seq_start = np.array([s["seq_start"] for s in shards], np.int64)  # [shards]
        self.n_rows: int = int(self._row_start[-1])
        self._pf: dict[int, object] = {}  # open ParquetFiles (not pickled)
        self._rg: dict[int, np.ndarray] = {}  # shard → row-group row offsets [n_rg+1]
        self._meta: dict[str, np.ndarray] | None = None
        self._last: tuple | None = None  # (shard, group, column, array): explorers read neighbours
        self._lock = threading.RLock()  # TUI workers may share one store

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, rows={self.n_rows}, layers={self.layers}, "
                f"d_model={self.d_model}, seq_len={self.seq_len})")

    def __getstate__(self):  # DataLoader workers: reopen files lazily on the other side
        state = dict(self.__dict__)
        state.update(_pf={}, _meta=None, _last=None, _lock=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    @property
    def n_windows(self) -> int:
        return self.n_rows // self.seq_len

    @property
    def complete(self) -> bool:
        """Whether every window of the input was recorded (a trace may still be running or resumable)."""
        return bool(self.manifest.get("complete"))

    def column(self, layer: int) -> str:
        """The activation column name of ``layer``; a one-line error if it was not traced."""
        if layer not in self.layers:
            raise TuiwbError(f"layer {layer} was not traced in {self.path}: it holds layers {self.layers}")
        return fmt.column_name(layer)

    # -- per-row metadata -------------------------------------------------------------------------
    def _metadata(self) -> dict[str, np.ndarray]:
        with self._lock:
            return self._load_metadata()

    def _load_metadata(self) -> dict[str, np.ndarray]:
        if self._meta is None:
            tok, doc = [], []
            vocab = self.manifest.get("vocab_size")
            for s in range(len(self._files)):
                with self._reading(s):
                    self._check_footer(s)
                    t = self._file(s).read(columns=["token_id", "doc_id"])
                    ids = t.column("token_id").to_numpy().astype(np.int64)
                    docs = t.column("doc_id").to_numpy().astype(np.int64)
                if len(ids) and (ids.min() < 0 or (vocab and ids.max() >= vocab)):
                    self._corrupt(s, f"token id {int(ids.max() if ids.max() >= (vocab or 0) else ids.min())} "
                                     f"is outside the vocabulary of {vocab}")
                if len(docs) and docs.min() < 0:
                    self._corrupt(s, f"document id {int(docs.min())} is negative")
                tok.append(ids.astype(np.int32))
                doc.append(docs)
            self._meta = {"token_id": np.concatenate(tok) if tok else np.empty(0, np.int32),
                          "doc_id": np.concatenate(doc) if doc else np.empty(0, np.int64)}
        return self._meta

    def _rows(self, rows) -> np.ndarray:
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        if r.size and (r.min() < 0 or r.max() >= self.n_rows):
            raise IndexError(f"row ids must be in 0..{self.n_rows - 1}")
        return r

    def token_ids(self, rows=None) -> np.ndarray:
        """Token ids (int32) of ``rows`` (all rows when None)."""
        t = self._metadata()["token_id"]
        return t if rows is None else t[self._rows(rows)]

    def doc_ids(self, rows=None) -> np.ndarray:
        """Document ids (int64, the input line index) of ``rows`` (all rows when None)."""
        d = self._metadata()["doc_id"]
        return d if rows is None else d[self._rows(rows)]

    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shard = np.searchsorted(self._row_start, rows, side="right") - 1  # [n]
        return shard, rows - self._row_start[shard]

    def positions(self, rows) -> np.ndarray:
        """Position of each row in its window (0 = the BOS)."""
        _, local = self._locate(self._rows(rows))
        return local % self.seq_len

    def seq_ids(self, rows) -> np.ndarray:
        """Global window index of each row."""
        shard, local = self._locate(self._rows(rows))
        return self._seq_start[shard] + local // self.seq_len

    # -- splits -----------------------------------------------------------------------------------
    def heldout_docs(self, val_fraction: float = 0.1) -> np.ndarray:
        """Sorted ids of the held-out documents (see the module docstring)."""
        _check_fraction(val_fraction)
        docs = np.unique(self.doc_ids())
        n_held = int(round(val_fraction * len(docs)))
        if val_fraction > 0 and len(docs) >= 2:
            n_held = min(max(n_held, 1), len(docs) - 1)
        order = np.argsort(_mix64(docs), kind="stable")
        return np.sort(docs[order[:n_held]])

    def _row_mask(self, split: str, val_fraction: float, exclude_special: bool) -> np.ndarray:
        if split not in SPLITS:
            raise TuiwbError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        mask = np.ones(self.n_rows, bool)
        if split != "all":
            held = np.isin(self.doc_ids(), self.heldout_docs(val_fraction), assume_unique=False)
            mask &= held if split == "heldout" else ~held
        if exclude_special and self.special_token_ids:
            mask &= ~np.isin(self.token_ids(), self.special_token_ids)
        return mask

    def row_indices(self, split: str = "train", val_fraction: float = 0.1, exclude_special: bool = True) -> np.ndarray:
        """Global row ids (int64, ascending) of ``split``, without BOS/EOS/pad rows unless asked."""
        return np.flatnonzero(self._row_mask(split, val_fraction, exclude_special)).astype(np.int64)

    # -- activations ------------------------------------------------------------------------------
    def _file(self, s: int):
        if s not in self._pf:
            import pyarrow as pa
            import pyarrow.parquet as pq

            with self._reading(s):  # page checksums (written by the tracer) are verified on every read
                self._pf[s] = pq.ParquetFile(pa.memory_map(str(self._files[s])), page_checksum_verification=True)
        return self._pf[s]

    @contextlib.contextmanager
    def _reading(self, s: int):
        """Turn a failed read of shard ``s`` (flipped bytes, truncation) into one line naming it."""
        import pyarrow as pa

        try:
            yield
        except (pa.ArrowException, OSError) as e:
            self._corrupt(s, (str(e).strip().splitlines() or [type(e).__name__])[0])

    def _corrupt(self, s: int, why: str):
        raise TuiwbError(f"shard {self._files[s]} is corrupt ({why}): delete it and run "
                         "`tuiwb trace --resume` with the same settings to record it again")

    def _check_footer(self, s: int) -> None:
        """The shard's row count and its per-column min/max statistics agree with the manifest."""
        md = self._file(s).metadata
        want = int(self._row_start[s + 1] - self._row_start[s])
        if md.num_rows != want:
            self._corrupt(s, f"{md.num_rows} rows, the manifest says {want}")
        names = md.schema.names
        bounds = {"pos": (0, self.seq_len - 1), "seq_id": (int(self._seq_start[s]), None), "token_id": (0, None)}
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for col, (lo, hi) in bounds.items():
                st = rg.column(names.index(col)).statistics if col in names else None
                if st is None or not st.has_min_max:
                    continue
                if st.min < lo or (hi is not None and st.max > hi):
                    self._corrupt(s, f"{col} values {st.min}..{st.max} are out of range")

    def _row_groups(self, s: int) -> np.ndarray:
        """Row offsets of shard ``s``'s row groups, ``[n_groups + 1]`` (from the footer)."""
        with self._lock:
            if s not in self._rg:
                md = self._file(s).metadata
                sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
                self._rg[s] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            return self._rg[s]

    def _read_group(self, s: int, g: int, column: str) -> np.ndarray:
        """One row group of one activation column as ``np.ndarray [rows, d_model]`` (read-only view
        of the decoded Arrow buffer, no copy)."""
        with self._lock:
            if self._last is not None and self._last[:3] == (s, g, column):
                return self._last[3]
            with self._reading(s):
                arr = self._file(s).read_row_group(g, columns=[column]).column(0).combine_chunks()
            n = len(arr)
            width = self.d_model * self.dtype.itemsize
            x = np.frombuffer(arr.buffers()[1], dtype=self.dtype, count=n * self.d_model,
                              offset=arr.offset * width).reshape(n, self.d_model)
            self._last = (s, g, column, x)
            return x

    def read_rows(self, layer: int, rows) -> "torch.Tensor":  # noqa: F821
        """Activations of ``rows`` (any order, repeats allowed) as ``float32 [n, d_model]``."""
        import torch

        col = self.column(layer)
        r = self._rows(rows)
        out = np.empty((len(r), self.d_model), np.float32)  # [n, d_model]
        shard, local = self._locate(r)
        for s in np.unique(shard):
            sel = np.flatnonzero(shard == s)
            offsets = self._row_groups(int(s))
            group = np.searchsorted(offsets, local[sel], side="right") - 1
            for g in np.unique(group):
                hit = sel[group == g]
                out[hit] = self._read_group(int(s), int(g), col)[local[hit] - offsets[g]]
        return torch.from_numpy(out)

    def batches(self, layer: int, batch_size: int, split: str = "train", val_fraction: float = 0.1,
                shuffle: bool = True, seed: int = 0, exclude_special: bool = True,
                max_tokens: int | None = None, drop_last: bool = False,
                shuffle_buffer_mb: float = 256) -> Iterator["torch.Tensor"]:  # noqa: F821
        """Stream ``float32 [batch_size, d_model]`` batches of one layer (the last may be smaller).

        One pass over ``split`` (or ``max_tokens`` rows). Memory is bounded by the shuffle buffer
        plus one row group, whatever the dataset size. A new ``seed`` gives a new order (epochs).
        """
        import torch

        if batch_size < 1:
            raise TuiwbError("batch_size must be at least 1")
        col = self.column(layer)
        mask = self._row_mask(split, val_fraction, exclude_special)
        rng = np.random.default_rng(seed)
        units = [(s, g) for s in range(len(self._files)) for g in range(len(self._row_groups(s)) - 1)]
        if shuffle:
            units = [units[i] for i in rng.permutation(len(units))]
        row_bytes = self.d_model * self.dtype.itemsize
        cap = max(2 * batch_size, int(shuffle_buffer_mb * 2**20) // row_bytes) if shuffle else batch_size
        budget = max_tokens if max_tokens is not None else self.n_rows
        pending: list[np.ndarray] = []
        n_pending = 0

        def drain(keep: int, final: bool = False):
            nonlocal pending, n_pending, budget
            x = np.concatenate(pending) if len(pending) > 1 else pending[0]  # [n_pending, d_model]
            if shuffle:
                x = x[rng.permutation(len(x))]
            n_out = max(0, (len(x) - keep) // batch_size * batch_size)
            if final and not drop_last:
                n_out = len(x)
            for i in range(0, n_out, batch_size):
                b = x[i:min(i + batch_size, n_out, i + budget)]
                budget -= len(b)
                yield torch.from_numpy(b.astype(np.float32))  # [batch, d_model]
                if budget <= 0:
                    return
            pending, n_pending = [x[n_out:]], len(x) - n_out

        for s, g in units:
            offsets = self._row_groups(s)
            start = self._row_start[s] + offsets[g]
            m = mask[start:start + offsets[g + 1] - offsets[g]]
            if not m.any():
                continue
            x = self._read_group(s, g, col)[m]  # [kept, d_model] (a copy: fancy index)
            pending.append(x)
            n_pending += len(x)
            if n_pending >= cap:
                yield from drain(keep=cap // 2 if shuffle else 0)
                if budget <= 0:
                    return
        if n_pending:
            yield from drain(keep=0, final=True)

    # -- windows and contexts ---------------------------------------------------------------------
    def windows(self, split: str = "all", val_fraction: float = 0.1) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(seq_id, token_ids [seq_len], rows [seq_len])`` per window, in order.

        A window may hold several documents; for ``train``/``heldout`` it belongs to the side most
        of its rows are on (ties go to train).
        """
        if split not in SPLITS:
            raise TuiwbError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        tok = self.token_ids()
        n_win, L = self.n_windows, self.seq_len
        if split != "all":
            held = np.isin(self.doc_ids(), self.heldout_docs(val_fraction)).reshape(n_win, L)
            in_held = held.sum(1) * 2 > L  # [n_windows]
            keep = in_held if split == "heldout" else ~in_held
        else:
            keep = np.ones(n_win, bool)
        for k in np.flatnonzero(keep):
            rows = np.arange(k * L, (k + 1) * L, dtype=np.int64)
            yield int(self.seq_ids([k * L])[0]), tok[rows], rows

    def context(self, row: int, before: int = 8, after: int = 4) -> list[tuple[int, int]]:
        """``(token_id, row)`` pairs around ``row`` within its window (``row`` itself included)."""
        row = int(self._rows([row])[0])
        start = row - int(self.positions([row])[0])
        lo, hi = max(start, row - before), min(start + self.seq_len - 1, row + after)
        rows = np.arange(lo, hi + 1, dtype=np.int64)
        return [(int(t), int(r)) for t, r in zip(self.token_ids(rows), rows)]


def _check_fraction(val_fraction: float) -> None:
    if not 0 <= val_fraction < 1:
        raise TuiwbError(f"val_fraction must be in [0, 1), not {val_fraction}")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fixed, well-spread hash of integer ids (for the document split)."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
