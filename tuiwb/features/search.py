"""Finding features in :class:`~tuiwb.features.FeatureStats`: by token, by density range, by id.

Every search returns :class:`Hits` — feature ids and scores, best first, as numpy arrays — so a
search over 16k features stays cheap; ``hits.rows(stats, top)`` builds the display rows lazily.
"""

from __future__ import annotations

from dataclasses import dataclass

import difflib

import numpy as np

from tuiwb.errors import TuiwbError
from tuiwb.features.stats import FeatureRow, FeatureStats

TOKEN_MODES = ("fires", "promotes")


@dataclass(frozen=True, eq=False)
class Hits:
    """Search results, best first."""

    ids: np.ndarray
    """``[n]`` feature ids."""
    scores: np.ndarray
    """``[n]`` the score each was ranked by (meaning depends on the search)."""

    def rows(self, stats: FeatureStats, top: int | None = None, n: int = 5) -> list[FeatureRow]:
        """Display rows of the first ``top`` hits."""
        return stats.rows(self.ids[:top], self.scores[:top], n=n)

    def __len__(self) -> int:
        return len(self.ids)


def _ranked(ids: np.ndarray, scores: np.ndarray, descending: bool = True) -> Hits:
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((ids, -scores if descending else scores))
    return Hits(ids[order], scores[order])


def resolve_token(token: str, tokenizer=None, stats: FeatureStats | None = None) -> int:
    """The id of a single token given as text (tried as-is, then with a leading space), or ``#ID``.

    Without a tokenizer the tokens the stats already know are searched.
    """
    text = str(token)
    if text.startswith("#") and text[1:].isdigit():
        return int(text[1:])
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        unk = getattr(tokenizer, "unk_token_id", None)
        for cand in (text, " " + text, "Ġ" + text, "▁" + text):
            if cand in vocab and vocab[cand] != unk:
                return int(vocab[cand])
        for cand in (text, " " + text):
            ids = tokenizer(cand, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and ids[0] != unk:
                return int(ids[0])
        close = difflib.get_close_matches(text, list(vocab), n=5, cutoff=0.6)
        close += [c for c in difflib.get_close_matches(" " + text, list(vocab), n=5, cutoff=0.6) if c not in close]
        hint = f"; close ones: {', '.join(repr(c) for c in close[:5])}" if close else ""
        raise TuiwbError(f"{token!r} is not a single token of this vocabulary (it would be unknown or split): "
                         f"give one token, or #ID for a token id{hint}")
    if stats is not None:
        for tid, s in stats.vocab.items():
            if s == text or s.strip() == text.strip():
                return int(tid)
    raise TuiwbError(f"unknown token {token!r}: no tokenizer is available to look it up (pass `model`), "
                     "or give its id as #ID")


def search_by_token(stats: FeatureStats, token: str | int, by: str = "fires", *, tokenizer=None, sae=None,
                    loaded=None) -> Hits:
    """Features that fire on ``token`` (``by="fires"``) or push its logit up (``by="promotes"``).

    * ``fires``: features that have the token among their top tokens, scored by their mean
      activation over *all* occurrences of the token — strong and reliable beats strong but rare.
    * ``promotes``: the direct logit effect of each decoder direction on the token; exact over all
      features when ``sae`` and ``loaded`` are given, else from the stored top-promoted lists.
    """
    if by not in TOKEN_MODES:
        raise TuiwbError(f"search mode must be one of {', '.join(TOKEN_MODES)}, not {by!r}")
    if tokenizer is None and loaded is not None:
        tokenizer = loaded.tokenizer
    tid = token if isinstance(token, (int, np.integer)) else resolve_token(token, tokenizer, stats)
    if by == "fires":
        f, slot = np.nonzero(stats.tok_ids == tid)  # [n], [n]
        count = stats.token_counts[tid] if tid < len(stats.token_counts) else 0
        if not count:
            return Hits(np.zeros(0, np.int64), np.zeros(0))
        return _ranked(f, stats.tok_sum[f, slot] / count)
    if sae is not None and loaded is not None:
        from tuiwb.features.logit_effects import decoder_logits

        col = np.concatenate([decoder_logits(sae, loaded, list(range(s, min(stats.d_sae, s + 1024))))
                              [:, tid].cpu().numpy() for s in range(0, stats.d_sae, 1024)])  # [d_sae]
        ids = np.nonzero(col > 0)[0]
        return _ranked(ids, col[ids])
    if not stats.has_logits:
        raise TuiwbError("these feature stats have no logit effects: pass `model` to compute them")
    f, slot = np.nonzero(stats.logit_ids == tid)
    vals = stats.logit_vals[f, slot]
    keep = vals > 0
    return _ranked(f[keep], vals[keep])


def filter_density(stats: FeatureStats, lo: float = 0.0, hi: float = 1.0, key: str = "density") -> Hits:
    """Features with ``lo <= density <= hi``, sorted by ``key`` (the score is the key's value)."""
    if not 0.0 <= lo <= hi <= 1.0:
        raise TuiwbError(f"density range must satisfy 0 <= lo <= hi <= 1, got {lo}..{hi}")
    ids = np.nonzero((stats.density >= lo) & (stats.density <= hi))[0]
    return _ranked(ids, stats.sort_values(key)[ids], descending=key != "id")


def search_by_id(stats: FeatureStats, ids, key: str = "density") -> Hits:
    """The given features in the given order (checked), scored by ``key``."""
    ids = np.array([stats.check_feature(i) for i in ids], dtype=np.int64)
    return Hits(ids, stats.sort_values(key)[ids].astype(np.float64))


class RangeError(TuiwbError, ValueError):
    """A malformed ``LO..HI`` range: a user error for the CLI, a ``ValueError`` for the search box."""


def parse_range(text: str, default: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """``"1e-4..1e-2"`` (or ``"1e-4:1e-2"``) → ``(1e-4, 1e-2)``; an empty side keeps its default.

    The one range syntax: ``features --density`` and the feature table's ``d:`` / ``max:`` terms.
    """
    text = str(text)
    sep = ".." if ".." in text else ":"
    lo, found, hi = text.partition(sep)
    if not found:
        raise RangeError(f"bad range {text!r}: use LO..HI, e.g. 1e-4..1e-2 (either side may be empty)")
    return parse_number(lo, default[0]), parse_number(hi, default[1])


def parse_number(s: str, default: float) -> float:
    """A range end or bound: a float, ``default`` when empty; a ``RangeError`` otherwise."""
    if not s.strip():
        return default
    try:
        return float(s)
    except ValueError:
        raise RangeError(f"not a number: {s.strip()!r} (a range is LO..HI, e.g. 1e-4..1e-2)") from None


def parse_ids(text: str) -> list[int]:
    """``"3,17,42"`` → ``[3, 17, 42]``."""
    try:
        return [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise TuiwbError(f"bad feature ids {text!r}: use comma-separated integers, e.g. 3,17,42") from None
