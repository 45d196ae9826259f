"""Read input text for tracing: any UTF-8 text file (``.txt``, ``.md``, ...), ``.jsonl`` and ``.parquet``
files, streamed.

A *document* is one non-blank line of a text file (any suffix but the two below), one JSON object of a ``.jsonl`` file (its
``text_field``), or one row of a ``.parquet`` file (its text column). Documents carry a ``doc_id``:
the global line (row) index across the input files in the order given, blank lines included. That
makes ids stable under ``--shard`` and ``--resume`` and lets a reader find the source line of any
activation row.

A Hugging Face hub dataset may be given as ``hf:NAME`` or ``hf:NAME:SPLIT`` when the optional
``datasets`` library is installed (streamed; no line count, so no progress total).
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuiwb.errors import TuiwbError

SUFFIXES = (".txt", ".jsonl", ".parquet")
"""The documented types; a file of another suffix is read as plain text (if it is UTF-8) ..."""
TABLES = (".csv", ".tsv", ".json")
"""... except these: text, but one line of them is not a document (a table row, part of one JSON value)."""
HUB_PREFIX = "hf:"


@dataclass(frozen=True)
class DataSource:
    """One input: a local file or a hub dataset."""

    spec: str
    """What the user passed (a path or ``hf:NAME[:SPLIT]``)."""
    kind: str
    """``"txt"``, ``"jsonl"``, ``"parquet"`` or ``"hub"``."""
    n_lines: int | None
    """Lines (rows) in the source, blank ones included; ``None`` for a streamed hub dataset."""
    size: int
    """File size in bytes (0 for a hub dataset): recorded so ``--resume`` can tell the data changed."""
    column: str | None = None
    """The text field / column used."""
    has_text: bool = True
    """False when every line is blank (known for .txt/.jsonl; assumed True otherwise)."""

    def fingerprint(self) -> dict:
        return {"path": self.spec, "kind": self.kind, "size": self.size, "lines": self.n_lines,
                "column": self.column}


def open_sources(specs: list[str] | tuple[str, ...], text_field: str = "text") -> list[DataSource]:
    """Check every input is readable and non-empty, count its lines; one-line errors otherwise."""
    if not specs:
        raise TuiwbError("no input data: pass `data` (.txt, .jsonl or .parquet files)")
    sources = [_open_one(str(s), text_field) for s in specs]
    if not any(s.has_text for s in sources):
        raise TuiwbError(f"the input data is empty: {', '.join(s.spec for s in sources)} holds no text")
    return sources


def _open_one(spec: str, text_field: str) -> DataSource:
    if spec.startswith(HUB_PREFIX):
        return _open_hub(spec, text_field)
    path = Path(spec).expanduser()
    if not path.exists():
        raise TuiwbError(f"data file {spec} does not exist: check the `data` path")
    if not path.is_file():
        raise TuiwbError(f"data path {spec} is not a file: pass .txt, .jsonl or .parquet files")
    suffix = path.suffix.lower()  # .jsonl and .parquet are structured; anything else is text, line by line
    if suffix in TABLES:
        raise TuiwbError(f"data file {spec} has an unsupported type {suffix!r}: a line of it is not a document; "
                         "convert it to .jsonl or .parquet (or plain text, one document per line)")
    if not os.access(path, os.R_OK):
        raise TuiwbError(f"data file {spec} is not readable: check its permissions")
    size = path.stat().st_size
    if suffix == ".parquet":
        return _open_parquet(spec, path, size, text_field)
    n_lines, has_text = _count_lines(spec, path)
    if suffix == ".jsonl":
        _check_jsonl_head(spec, path, text_field)
        return DataSource(spec, "jsonl", n_lines, size, text_field, has_text)
    return DataSource(spec, "txt", n_lines, size, None, has_text)


def _count_lines(spec: str, path: Path) -> tuple[int, bool]:
    """Lines in a text file (a last line without ``\\n`` counts) and whether any is non-blank; checks UTF-8."""
    n = 0
    has_text = False
    last = b"\n"
    decoder = codecs.getincrementaldecoder("utf-8")()  # chunk edges may split a character
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                n += chunk.count(b"\n")
                last = chunk[-1:]
                has_text = has_text or bool(chunk.strip())
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        raise TuiwbError(f"data file {spec} is not UTF-8 text ({e.reason}): a data file is UTF-8 text "
                         "(one document per line), .jsonl or .parquet") from e
    except OSError as e:
        raise TuiwbError(f"cannot read data file {spec}: {e.strerror or e}") from e
    return n + (last != b"\n"), has_text


def _check_jsonl_head(spec: str, path: Path, text_field: str) -> None:
    """Fail early on the first non-blank line, so a wrong --text-field costs no model time."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                _jsonl_text(spec, i, line, text_field)
                return


def _jsonl_text(spec: str, i: int, line: str, text_field: str) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise TuiwbError(f"{spec} line {i + 1} is not valid JSON ({e.msg}): fix the file") from e
    if not isinstance(obj, dict) or text_field not in obj:
        keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise TuiwbError(f"{spec} line {i + 1} has no {text_field!r} field (has: {keys}): "
                         "pass `text_field=NAME`")
    text = obj[text_field]
    if not isinstance(text, str):
        raise TuiwbError(f"{spec} line {i + 1}: field {text_field!r} is {type(text).__name__}, not text")
    return text


def _open_parquet(spec: str, path: Path, size: int, text_field: str) -> DataSource:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise TuiwbError(f"cannot read data file {spec} as Parquet: {str(e).splitlines()[0]}") from e
    schema = meta.schema_arrow
    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    if text_field in schema.names:
        if text_field not in strings:
            raise TuiwbError(f"{spec}: column {text_field!r} is {schema.field(text_field).type}, not text")
        column = text_field
    elif len(strings) == 1:
        column = strings[0]  # the only text column: no need to make the user name it
    else:
        raise TuiwbError(f"{spec} has no {text_field!r} column (text columns: {', '.join(strings) or 'none'}): "
                         "pass `text_field=NAME`")
    return DataSource(spec, "parquet", meta.metadata.num_rows, size, column, meta.metadata.num_rows > 0)


def _open_hub(spec: str, text_field: str) -> DataSource:
    try:
        import datasets  # noqa: F401
    except ImportError as e:
        raise TuiwbError(f"{spec} names a hub dataset, which needs the optional `datasets` library: "
                         "pip install datasets, or pass a local file") from e
    return DataSource(spec, "hub", None, 0, text_field)


def iter_documents(sources: list[DataSource], batch: int = 1024) -> Iterator[list[tuple[int, str]]]:
    """Yield batches of ``(doc_id, text)``, skipping blank documents; streamed, constant memory."""
    offset = 0
    out: list[tuple[int, str]] = []
    for src in sources:
        n = 0
        for i, text in _iter_source(src):
            n = i + 1
            if text and not text.isspace():
                out.append((offset + i, text))
                if len(out) >= batch:
                    yield out
                    out = []
        offset += src.n_lines if src.n_lines is not None else n
    if out:
        yield out


def _iter_source(src: DataSource) -> Iterator[tuple[int, str]]:
    if src.kind == "txt":
        with open(src.spec, encoding="utf-8", newline="\n") as f:
            for i, line in enumerate(f):
                yield i, line.rstrip("\r\n")
    elif src.kind == "jsonl":
        with open(src.spec, encoding="utf-8", newline="\n") as f:
            for i, line in enumerate(f):
                if line.strip():
                    yield i, _jsonl_text(src.spec, i, line, src.column)
    elif src.kind == "parquet":
        import pyarrow.parquet as pq

        i = 0
        for rb in pq.ParquetFile(src.spec).iter_batches(columns=[src.column], batch_size=4096):
            for text in rb.column(0).to_pylist():
                yield i, text or ""
                i += 1
    else:  # hub
        import datasets

        _, name, *rest = src.spec.split(":", 2)
        ds = datasets.load_dataset(name, split=rest[0] if rest else "train", streaming=True)
        for i, row in enumerate(ds):
            yield i, str(row.get(src.column) or "")


def read_lines(path: str | Path, what: str = "text file") -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped: one prompt (or document) per line.

    The one reader of prompt sets and fitting text; ``what`` names the file in its errors.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise TuiwbError(f"{what} {path} does not exist: give a UTF-8 text file, one entry per line")
    try:
        raw = p.read_bytes()
        if b"\0" in raw:
            raise UnicodeDecodeError("utf-8", raw, raw.index(b"\0"), raw.index(b"\0") + 1, "NUL byte")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TuiwbError(f"{what} {path} is not UTF-8 text ({e.reason}): give a plain text file") from e
    except OSError as e:
        raise TuiwbError(f"cannot read {what} {path}: {e.strerror or e}") from e
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise TuiwbError(f"{what} {path} is empty: put one entry per line")
    return lines
