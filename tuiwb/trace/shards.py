"""The on-disk format of an activation directory: names, schema, manifest, crash-safe writing.

Shared by the recorder (``tuiwb.trace``, through ``ShardWriter``/``WriterThread``) and the reader
(``tuiwb.store``). The manifest is the source
of truth for readers: it lists exactly the complete shard files. Writers change it only under a lock
(``flock`` on the parent directory, so parallel ``--shard`` processes merge their entries) and by
atomic replace, so a reader never sees a half-written manifest.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
import time
from pathlib import Path

import numpy as np

from tuiwb.atomic import write_text
from tuiwb.errors import TuiwbError
from tuiwb.hashing import stable_hash
from tuiwb.locks import path_lock
from tuiwb.model.hooks import hook_name

FORMAT = "tuiwb.activations"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KV_KEY = "tuiwb"
"""Parquet footer key holding a shard's own description (lets --resume adopt a renamed shard)."""
META_COLUMNS = ("seq_id", "pos", "doc_id", "token_id")
WRITE_OPTIONS = {"compression": "NONE", "use_dictionary": False, "write_page_checksum": True,
                 "write_statistics": ["seq_id", "pos", "doc_id", "token_id"]}
"""``pq.ParquetWriter`` options: activations are incompressible noise to a codec and dictionary
encoding halves write speed; min/max statistics only where they help (not on raw bytes)."""
_SHARD_RE = re.compile(r"^(\.)?part-(\d{6,})\.parquet(\.tmp)?$")
# Header keys that must agree for a run to resume or join an existing directory.
COMPAT_KEYS = ("format_version", "model_id", "config_hash", "layers", "d_model", "dtype", "seq_len",
               "windows_per_shard", "bos_token_id", "max_tokens", "text_field", "data")


def column_name(layer: int) -> str:
    """The activation column of block ``layer``: its hook point name."""
    return hook_name(layer)


def shard_name(chunk: int) -> str:
    return f"part-{chunk:06d}.parquet"


def temp_name(chunk: int) -> str:
    return f".part-{chunk:06d}.parquet.tmp"


def is_shard_file(name: str) -> bool:
    """A complete shard or a writer's temporary file (anything else makes a directory not ours)."""
    return bool(_SHARD_RE.match(name))


def schema(columns: list[str], width: int):
    """Row schema: ``seq_id, pos, doc_id, token_id`` then one ``fixed_size_binary(width)`` per layer."""
    import pyarrow as pa

    return pa.schema([("seq_id", pa.int64()), ("pos", pa.int32()), ("doc_id", pa.int64()),
                      ("token_id", pa.int32()), *[(c, pa.binary(width)) for c in columns]])


def read_manifest(out: Path | str) -> dict:
    path = Path(out) / MANIFEST
    try:
        man = json.loads(path.read_text())
    except FileNotFoundError:
        raise TuiwbError(f"{out} has no {MANIFEST}: it is not a tuiwb activation directory "
                         "(make one with `tuiwb trace`)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise TuiwbError(f"cannot read {path}: {e}") from e
    if man.get("format") != FORMAT:
        raise TuiwbError(f"{path} is not a tuiwb activation manifest")
    if man.get("format_version", 0) > FORMAT_VERSION:
        raise TuiwbError(f"{path} has format version {man['format_version']}, newer than this tuiwb "
                         f"({FORMAT_VERSION}): upgrade tuiwb")
    return man


def write_manifest(out: Path, man: dict) -> None:
    """Atomic replace; one line per shard keeps it readable and cheap to rewrite after every shard."""
    head = json.dumps({k: v for k, v in man.items() if k != "shards"}, indent=1)[:-2]  # without "\n}"
    rows = ",\n  ".join(json.dumps(s) for s in man.get("shards", []))
    write_text(out / MANIFEST, f'{head},\n "shards": [\n  {rows}\n ]\n}}\n')


def dir_lock(out: Path):
    """Exclusive lock for manifest read-modify-write, held on ``out``'s parent directory.

    The parent (not ``out``) so that creating or replacing ``out`` itself is covered too, and no
    lock file is left behind.
    """
    return path_lock(Path(out).parent)


def _data_key(data: list[dict]) -> list:
    # Paths may differ between machines of a parallel run; the files themselves must not.
    return [(Path(d["path"]).name, d.get("size"), d.get("lines"), d.get("column")) for d in data]


def check_compatible(man: dict, header: dict, out: Path) -> None:
    for key in COMPAT_KEYS:
        a, b = man.get(key), header.get(key)
        if key == "data":
            a, b = _data_key(a or []), _data_key(b or [])
        if a != b:
            raise TuiwbError(f"{out} was traced with a different {key} ({_short(man.get(key))} there, "
                             f"{_short(header.get(key))} now): use the same settings, or `overwrite=True`")


def _short(v) -> str:
    s = json.dumps(v)
    return s if len(s) <= 60 else s[:57] + "..."


_VOLATILE = ("created", "updated", "tuiwb_version", "model_id")  # model_id: a path; config hash + fingerprint say which model


def manifest_identity(man: dict) -> str:
    """Hash of what a trace *recorded*: the same model, data and settings give the same hash on any
    machine, at any time, in any directory (timestamps, versions and data paths are left out).

    What SAEs, feature-stats caches and the demo's results record of the activations they came from.
    """
    ident = {k: v for k, v in man.items() if k not in _VOLATILE}
    ident["data"] = _data_key(man.get("data") or [])
    ident["shards"] = [{k: s[k] for k in ("chunk", "seq_start", "seq_end", "rows")} for s in man.get("shards", [])]
    return stable_hash(ident)


def new_manifest(header: dict) -> dict:
    return {**header, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "shards": [], "total_windows": None}


def _totals(man: dict) -> dict:
    man["shards"].sort(key=lambda s: s["seq_start"])
    man["n_windows"] = sum(s["seq_end"] - s["seq_start"] for s in man["shards"])
    man["n_tokens"] = sum(s["rows"] for s in man["shards"])
    man["complete"] = man.get("total_windows") is not None and man["n_windows"] == man["total_windows"]
    man["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return man


def update_manifest(out: Path, header: dict, fn) -> dict:
    """Read (or start) the manifest under the lock, check it matches ``header``, apply ``fn``, write."""
    with dir_lock(out):
        if (out / MANIFEST).is_file():
            man = read_manifest(out)
            check_compatible(man, header, out)
        else:
            man = new_manifest(header)
        fn(man)
        _totals(man)
        write_manifest(out, man)
        return man


def add_shard(man: dict, entry: dict) -> None:
    man["shards"] = [s for s in man["shards"] if s["chunk"] != entry["chunk"]] + [entry]


def set_total(man: dict, n_windows: int) -> None:
    man["total_windows"] = n_windows


def shard_kv(entry: dict, header: dict) -> str:
    return json.dumps({**{k: entry[k] for k in ("chunk", "seq_start", "seq_end", "rows")},
                       **{k: header[k] for k in ("config_hash", "layers", "dtype", "seq_len", "windows_per_shard")}})


def _read_kv(path: Path) -> dict | None:
    import pyarrow.parquet as pq

    try:
        kv = pq.read_metadata(path).metadata or {}
        return json.loads(kv[KV_KEY.encode()])
    except Exception:  # noqa: BLE001 — unreadable or foreign: treat as not a shard of ours
        return None


def reconcile(out: Path, header: dict, mine, drop_mine: bool = False) -> dict:
    """Bring ``out`` to a state where the manifest lists exactly its whole shards (call under the lock).

    For the chunks this process owns (``mine(chunk)``): delete temporary files left by a killed run;
    adopt a complete shard renamed just before a kill (its footer describes it) or delete it if it
    does not match; with ``drop_mine`` delete them all (``--overwrite`` of one slice).
    """
    man = read_manifest(out) if (out / MANIFEST).is_file() else new_manifest(header)
    check_compatible(man, header, out)
    listed = {s["file"] for s in man["shards"]}
    for p in sorted(out.iterdir()):
        m = _SHARD_RE.match(p.name)
        if not m or not mine(int(m.group(2))):
            continue
        if m.group(1) or m.group(3) or drop_mine:  # a temp file, or a slice being replaced
            p.unlink(missing_ok=True)
        elif p.name not in listed:
            kv = _read_kv(p)
            same = kv is not None and all(kv.get(k) == header[k] for k in
                                          ("config_hash", "layers", "dtype", "seq_len", "windows_per_shard"))
            if same and kv.get("chunk") == int(m.group(2)):
                add_shard(man, {"file": p.name, "bytes": p.stat().st_size,
                                **{k: kv[k] for k in ("chunk", "seq_start", "seq_end", "rows")}})
            else:
                p.unlink()
    if drop_mine:
        man["shards"] = [s for s in man["shards"] if not mine(s["chunk"])]
    else:  # a listed shard the user deleted (a corrupt one): record it again
        man["shards"] = [s for s in man["shards"] if not mine(s["chunk"]) or (out / s["file"]).is_file()]
    if man["shards"] or (out / MANIFEST).is_file():
        _totals(man)
        write_manifest(out, man)
    return man


# --------------------------------------------------------------------------------------------------
# Writing shards


class ShardWriter:
    """Appends windows to shard files: one file per chunk of ``windows_per_shard`` windows.

    Rows are buffered into row groups of ``row_group_windows`` windows (the only rows held in
    memory); a finished chunk's temporary file is renamed into place and handed to ``on_commit``.
    """

    def __init__(self, out: Path, header: dict, row_group_windows: int, on_commit):
        import pyarrow as pa

        self.out, self.header, self.on_commit = out, header, on_commit
        self.dtype = np.dtype(header["dtype"])
        self.seq_len, self.d = header["seq_len"], header["d_model"]
        self.windows_per_shard, self.row_group_windows = header["windows_per_shard"], row_group_windows
        self.layers = header["layers"]
        self.columns = [column_name(L) for L in self.layers]
        self.schema = schema(self.columns, self.d * self.dtype.itemsize)
        self.pa = pa
        self.chunk: int | None = None
        self.writer = None
        self.tmp: Path | None = None
        self.pending: list = []  # [(index, tokens, doc_ids, {layer: acts})] of one row group
        self.first = self.last = None
        self.bytes_written = 0

    def add(self, index, tokens, doc_ids, acts) -> None:
        wps = self.windows_per_shard
        for b in range(len(index)):
            chunk = int(index[b]) // wps
            if chunk != self.chunk:
                self.finish()
                self._open(chunk)
            elif int(index[b]) != self.last + 1:  # a chunk is recorded whole, in order, or not at all
                raise RuntimeError(f"window {index[b]} arrived after {self.last} in chunk {chunk}")
            self.pending.append((int(index[b]), tokens[b], doc_ids[b], {L: a[b] for L, a in acts.items()}))
            self.last = int(index[b])
            if len(self.pending) >= self.row_group_windows:
                self._flush()

    def _open(self, chunk: int) -> None:
        import pyarrow.parquet as pq

        self.chunk = chunk
        self.tmp = self.out / temp_name(chunk)
        self.writer = pq.ParquetWriter(self.tmp, self.schema, **WRITE_OPTIONS)
        self.first = None

    def _flush(self) -> None:
        if not self.pending:
            return
        pa, L = self.pa, self.seq_len
        idx = np.array([p[0] for p in self.pending], np.int64)
        if self.first is None:
            self.first = int(idx[0])
        n = len(idx) * L
        cols = {
            "seq_id": pa.array(np.repeat(idx, L)),
            "pos": pa.array(np.tile(np.arange(L, dtype=np.int32), len(idx))),
            "doc_id": pa.array(np.concatenate([p[2] for p in self.pending]).astype(np.int64)),
            "token_id": pa.array(np.concatenate([p[1] for p in self.pending]).astype(np.int32)),
        }
        for layer, name in zip(self.layers, self.columns):
            a = np.ascontiguousarray(np.concatenate([p[3][layer] for p in self.pending]), self.dtype)  # [n, d]
            cols[name] = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(a.shape[1] * a.itemsize), n, [None, pa.py_buffer(a)])
        self.writer.write_table(pa.table(cols, schema=self.schema), row_group_size=n)
        self.bytes_written += sum(c.nbytes for c in cols.values())
        self.pending = []

    def finish(self) -> None:
        """Close the current shard, rename it into place and list it in the manifest."""
        if self.writer is None:
            return
        self._flush()
        entry = {"file": shard_name(self.chunk), "chunk": self.chunk, "seq_start": self.first,
                 "seq_end": self.last + 1, "rows": (self.last + 1 - self.first) * self.seq_len}
        self.writer.add_key_value_metadata({KV_KEY: shard_kv(entry, self.header)})
        self.writer.close()
        self.writer = None
        final = self.out / entry["file"]
        entry["bytes"] = self.tmp.stat().st_size
        os.replace(self.tmp, final)
        self.tmp = None
        self.on_commit(entry)

    def abort(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 — the temp file goes away regardless
                pass
            self.writer = None
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            self.tmp = None
        self.pending = []


class WriterThread:
    """A bounded queue from the forward loop to the writer thread: memory stays flat, I/O overlaps."""

    def __init__(self, writer: ShardWriter, maxsize: int = 4):
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.error: BaseException | None = None
        self.stop = False
        self.thread = threading.Thread(target=self._loop, name="tuiwb-trace-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.stop or self.error is not None:
                continue  # drain without writing
            try:
                self.writer.add(*item)
            except BaseException as e:  # noqa: BLE001 — re-raised in the main thread
                self.error = e

    def put(self, item) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        self.writer.finish()

    def abort(self, flush: bool = False) -> None:
        """Stop the writer; ``flush`` first writes what is already queued (an interrupt keeps work done)."""
        self.stop = not flush
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        self.writer.abort()
