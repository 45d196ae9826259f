"""Small activation directories for the SAE trainer/eval tests (a tiny random model, traced)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from tiny_models import WORDS, make_tiny_checkpoint


def make_acts(root: Path, *, n_layers: int = 2, d_model: int = 32, n_docs: int = 500, seq_len: int = 32,
              seed: int = 0) -> tuple[Path, Path]:
    """Trace every layer of a tiny random llama over random word documents → ``(model_dir, acts_dir)``."""
    from tuiwb.trace.config import TraceConfig
    from tuiwb.trace.tracer import trace

    root = Path(root)
    model = make_tiny_checkpoint(root / "model", n_layers=n_layers, d_model=d_model, seed=seed)
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30))) for _ in range(n_docs)]
    (root / "text.txt").write_text("\n".join(docs) + "\n")
    acts = root / "acts.parquet"
    trace(TraceConfig(data=[str(root / "text.txt")], out=str(acts), layers=["all"], model=str(model),
                      seq_len=seq_len, batch_size=32), progress=False)
    return model, acts


def poison_rows(acts: Path, layer: int, rows: list[int], value: float = float("nan")) -> None:
    """Overwrite ``rows`` of ``layer`` in the first shard with ``value`` (same schema and row groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tuiwb.trace.shards import column_name, read_manifest

    man = read_manifest(acts)
    shard = acts / sorted(man["shards"], key=lambda s: s["seq_start"])[0]["file"]
    pf = pq.ParquetFile(shard)
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    table = pf.read()
    col = column_name(layer)
    dtype = np.dtype(man["dtype"])
    width = man["d_model"] * dtype.itemsize
    raw = np.frombuffer(table.column(col).combine_chunks().buffers()[1], dtype=dtype,
                        count=len(table) * man["d_model"]).reshape(len(table), man["d_model"]).copy()
    raw[rows] = value
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(table), [None, pa.py_buffer(raw.tobytes())])
    table = table.set_column(table.schema.get_field_index(col), table.schema.field(col), arr)
    writer = pq.ParquetWriter(shard, table.schema, use_dictionary=False, compression="none")
    start = 0
    for n in sizes:
        writer.write_table(table.slice(start, n))
        start += n
    writer.close()
