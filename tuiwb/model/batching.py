"""Right-padded batches of token sequences, the one batcher every multi-prompt forward uses.

Right padding needs no attention mask in a causal LM: real positions never attend to the pads
after them, and each row is read at its own last real position.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import torch


class Batch(NamedTuple):
    """One right-padded batch."""

    ids: torch.Tensor
    """``[B, T]`` token ids, ``pad_id`` after each sequence's end."""
    mask: torch.Tensor
    """``[B, T]`` bool: True on real tokens."""
    last: torch.Tensor
    """``[B]`` index of each sequence's last real token."""


def right_padded(seqs: Sequence[Sequence[int]], batch_size: int, pad_id: int, device) -> Iterator[Batch]:
    """``Batch``es of ``batch_size`` sequences, in order, on ``device``."""
    for s in range(0, len(seqs), batch_size):
        chunk = seqs[s:s + batch_size]
        width = max(len(c) for c in chunk)
        ids = torch.full((len(chunk), width), int(pad_id), dtype=torch.long)  # [B, T]
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)  # [B, T]
        for j, c in enumerate(chunk):
            ids[j, :len(c)] = torch.as_tensor(list(c), dtype=torch.long)
            mask[j, :len(c)] = True
        last = torch.tensor([len(c) - 1 for c in chunk], dtype=torch.long)  # [B]
        yield Batch(ids.to(device), mask.to(device), last.to(device))
