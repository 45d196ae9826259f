"""Packing: a stream of documents → fixed-length token windows, each starting with a BOS."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """One packed window of ``seq_len`` tokens."""

    index: int
    """Global window index (``seq_id``): the same for every ``--shard`` slice and on ``--resume``."""
    tokens: object
    """``np.ndarray [seq_len] int32``: token ids; position 0 is always the BOS (when there is one)."""
    doc_ids: object
    """``np.ndarray [seq_len] int64``: the document each position belongs to."""


def pack_windows(doc_batches, tokenize, seq_len: int, bos_id: int | None,
                 max_windows: int | None = None) -> Iterator[Window]:
    """Tokenize documents, BOS-prefix each, and pack the stream into windows of ``seq_len``.

    Every window starts with a BOS at position 0: a window that opens on a new document uses that
    document's own BOS; one that continues a document gets a BOS inserted (carrying that document's
    id), so no window's first position sees an arbitrary mid-sentence token as the attention sink.
    Documents inside a window are separated by their BOS. The trailing partial window is dropped
    (no padding rows). ``tokenize(list[str]) -> list[list[int]]``; ``bos_id=None`` (a tokenizer with
    neither BOS nor EOS) packs the bare concatenation.
    """
    import numpy as np

    carry_tok = np.empty(0, np.int32)
    carry_doc = np.empty(0, np.int64)
    carry_start = np.empty(0, bool)  # True where a document's own BOS sits
    w = 0
    for batch in doc_batches:
        ids_lists = tokenize([text for _, text in batch])
        flat: list[int] = []
        lengths: list[int] = []
        docs: list[int] = []
        for (doc_id, _), ids in zip(batch, ids_lists):
            if not ids:
                continue
            if bos_id is not None:
                flat.append(bos_id)
            flat.extend(ids)
            lengths.append(len(ids) + (bos_id is not None))
            docs.append(doc_id)
        if not flat:
            continue
        starts = np.zeros(len(flat), bool)
        starts[np.cumsum([0, *lengths[:-1]])] = bos_id is not None
        tok = np.concatenate([carry_tok, np.asarray(flat, np.int32)])  # [stream]
        doc = np.concatenate([carry_doc, np.repeat(np.asarray(docs, np.int64), lengths)])  # [stream]
        start = np.concatenate([carry_start, starts])  # [stream]
        i = 0
        while True:
            # at the stream's end `fresh` is moot: no full window fits, so the loop stops below
            fresh = bos_id is None or i >= len(tok) or bool(start[i])
            need = seq_len if fresh else seq_len - 1
            if i + need > len(tok):
                break
            if fresh:
                wt, wd = tok[i:i + need].copy(), doc[i:i + need].copy()
            else:  # continue a document: insert its BOS at position 0
                wt = np.concatenate([np.asarray([bos_id], np.int32), tok[i:i + need]])
                wd = np.concatenate([doc[i:i + 1], doc[i:i + need]])
            yield Window(w, wt, wd)
            w += 1
            i += need
            if max_windows is not None and w >= max_windows:
                return
        carry_tok, carry_doc, carry_start = tok[i:], doc[i:], start[i:]
