"""Per-feature statistics of an SAE over an activation store, and their on-disk cache.

One streaming pass over the stored activations of the SAE's layer (:func:`compute_feature_stats`)
gives, for every feature f:

* **density** — the fraction of (non-special) tokens where ``a_f > 0``; **mean_act** — the mean
  activation *where it fires* (0 for a dead feature); **max_act**;
* the **top-k activating rows** (global row id + activation), kept as a running top-k so memory stays
  ``[d_sae, k]`` however long the store is; contexts are resolved from the store at display time;
* the **top tokens** — the token ids carrying the largest share of the feature's total activation;
* with a model, the **logit effects** — the output tokens its decoder direction promotes/suppresses
  through the final norm's gain and the unembedding (the "direct" path, ignoring later layers).

Everything per feature is a numpy array indexed by feature id, so a 16k-feature SAE is a few MB and
the TUI builds rows (:class:`FeatureRow`) lazily. This module holds the data model; the work is split
by idea and re-exported here: the pass in :mod:`tuiwb.feature_pass`, logit effects in
:mod:`tuiwb.feature_logits`, the on-disk cache (:func:`load_or_compute`: ``features.npz`` without
pickle + ``features.json`` with the key) in :mod:`tuiwb.feature_cache`, searching in
:mod:`tuiwb.feature_search`, contrast search in :mod:`tuiwb.contrast`.
"""

from __future__ import annotations

import functools
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tuiwb.atomic import write_file, write_text
from tuiwb.errors import TuiwbError

CACHE_VERSION = 1
HIST_EDGES = np.linspace(-8.0, 0.0, 33)
"""Bin edges of the log10-density histogram (densities below 1e-8 land in the first bin)."""
SORT_KEYS = ("density", "max", "mean", "id")


@dataclass(frozen=True)
class TokenValue:
    """A token and a number attached to it (activation share, logit effect, …)."""

    token: str
    """Decoded token text."""
    value: float
    """What the list ranks by; its meaning is stated where the list is made."""
    id: int = -1
    """Token id (-1 when unknown)."""

    def to_json(self) -> dict:
        return {"token": self.token, "value": float(self.value)}


@dataclass(frozen=True)
class FeatureRow:
    """One feature as the CLI, the TUI and the server show it (the ``--json`` row)."""

    id: int
    """Feature index in the SAE."""
    density: float
    """Fraction of tokens where the feature is active."""
    max_act: float
    """Largest activation seen."""
    mean_act: float
    """Mean activation over the tokens where it fires."""
    top_tokens: tuple[TokenValue, ...]
    """Tokens carrying most of its activation; value = share of its total activation (0..1)."""
    top_logits: tuple[TokenValue, ...]
    """Output tokens its decoder direction promotes most; value = direct logit effect per unit act."""
    score: float
    """The search/contrast score (or the sort key when listing)."""
    bottom_logits: tuple[TokenValue, ...] = ()
    """Output tokens it suppresses most (most negative logit effect first); not in the JSON row."""

    def to_json(self) -> dict:
        score = float(self.score)
        return {"id": int(self.id), "density": float(self.density), "max_act": float(self.max_act),
                "mean_act": float(self.mean_act), "top_tokens": [t.to_json() for t in self.top_tokens],
                "top_logits": [t.to_json() for t in self.top_logits],
                "score": score if math.isfinite(score) else None}


@dataclass(frozen=True)
class Context:
    """One top-activating context of a feature, resolved from the activation store."""

    row: int
    """Global row id of the activating token."""
    seq_id: int
    """Window the row belongs to."""
    pos: int
    """Position of the row in its window."""
    activation: float
    """The feature's activation at ``row``."""
    tokens: tuple[str, ...]
    """Decoded tokens around the row (``before`` … row … ``after``)."""
    acts: tuple[float, ...]
    """The feature's activation on each of ``tokens``."""
    focus: int
    """Index of the activating token in ``tokens``."""


@dataclass(frozen=True)
class StatsConfig:
    """What one statistics pass records (part of the cache key)."""

    top_k: int = 20
    """Top activating rows kept per feature."""
    n_tokens: int = 10
    """Top tokens and top/bottom logits kept per feature."""
    batch_size: int = 4096
    """Rows encoded per step; lowered for wide SAEs so the dense codes stay ≤ 128 MB."""
    split: str = "all"
    """Store split to read: ``all``, ``train`` or ``heldout``."""
    max_tokens: int | None = None
    """Stop after this many tokens (None: the whole split)."""

    def __post_init__(self):
        if self.top_k < 1 or self.n_tokens < 1 or self.batch_size < 1:
            raise TuiwbError("top_k, n_tokens and batch_size must be at least 1")
        if self.split not in ("all", "train", "heldout"):
            raise TuiwbError(f"split must be all, train or heldout, not {self.split!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise TuiwbError("max_tokens must be at least 1")


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Statistics of every feature of one SAE (arrays indexed by feature id)."""

    layer: int
    """Layer of the SAE."""
    n_tokens: int
    """Tokens the pass read."""
    density: np.ndarray
    """``[d_sae]`` fraction of tokens where the feature fires."""
    mean_act: np.ndarray
    """``[d_sae]`` mean activation where it fires (0 if dead)."""
    max_act: np.ndarray
    """``[d_sae]`` largest activation."""
    total_act: np.ndarray
    """``[d_sae]`` sum of activations (float64)."""
    hist: np.ndarray
    """``[len(HIST_EDGES) - 1]`` counts of log10(density) over the live features."""
    top_rows: np.ndarray
    """``[d_sae, top_k]`` global rows of the highest activations, best first (-1 = none)."""
    top_acts: np.ndarray
    """``[d_sae, top_k]`` those activations."""
    tok_ids: np.ndarray
    """``[d_sae, n_tokens]`` token ids carrying most activation, best first (-1 = none)."""
    tok_sum: np.ndarray
    """``[d_sae, n_tokens]`` the feature's summed activation on each of those tokens."""
    tok_fires: np.ndarray
    """``[d_sae, n_tokens]`` how often the feature fired on each of those tokens."""
    token_counts: np.ndarray
    """``[max_token_id + 1]`` occurrences of each token id in the pass."""
    logit_ids: np.ndarray | None = None
    """``[d_sae, n_tokens]`` most promoted output tokens (None without a model)."""
    logit_vals: np.ndarray | None = None
    """``[d_sae, n_tokens]`` their direct logit effects."""
    neg_logit_ids: np.ndarray | None = None
    """``[d_sae, n_tokens]`` most suppressed output tokens, most negative first."""
    neg_logit_vals: np.ndarray | None = None
    """``[d_sae, n_tokens]`` their (negative) logit effects."""
    vocab: dict[int, str] = field(default_factory=dict)
    """Decoded text of every token id the arrays above mention."""
    hist_edges: np.ndarray = field(default_factory=lambda: HIST_EDGES.copy())
    """Bin edges of ``hist`` (log10 density)."""

    @property
    def d_sae(self) -> int:
        return int(self.density.shape[0])

    @property
    def n_dead(self) -> int:
        return int((self.density == 0).sum())

    @property
    def has_logits(self) -> bool:
        return self.logit_ids is not None

    def check_feature(self, f: int) -> int:
        f = int(f)
        if not 0 <= f < self.d_sae:
            raise TuiwbError(f"feature {f} does not exist: the SAE at layer {self.layer} has features "
                             f"0..{self.d_sae - 1}")
        return f

    def token_str(self, token_id: int) -> str:
        return self.vocab.get(int(token_id), f"#{int(token_id)}")

    # ---- per-feature accessors (lazy: the TUI asks for the visible rows only) ----------------------
    def top_tokens(self, f: int, n: int | None = None) -> list[TokenValue]:
        """Tokens carrying most of ``f``'s activation; value = share of its total activation."""
        f = self.check_feature(f)
        total = float(self.total_act[f]) or 1.0
        ids, sums = self.tok_ids[f], self.tok_sum[f]
        out = [TokenValue(self.token_str(t), float(s) / total, int(t)) for t, s in zip(ids, sums) if t >= 0]
        return out[:n] if n is not None else out

    def token_mean(self, f: int, token_id: int) -> float:
        """Mean activation of ``f`` over *all* occurrences of ``token_id`` (0 when not in its top tokens)."""
        hit = np.nonzero(self.tok_ids[f] == token_id)[0]
        if not hit.size or token_id >= len(self.token_counts) or not self.token_counts[token_id]:
            return 0.0
        return float(self.tok_sum[f, hit[0]] / self.token_counts[token_id])

    def top_logits(self, f: int, n: int | None = None) -> list[TokenValue]:
        """Output tokens the decoder direction promotes most (empty without logit effects)."""
        return self._logits(self.logit_ids, self.logit_vals, f, n)

    def bottom_logits(self, f: int, n: int | None = None) -> list[TokenValue]:
        """Output tokens the decoder direction suppresses most, most negative first."""
        return self._logits(self.neg_logit_ids, self.neg_logit_vals, f, n)

    def _logits(self, ids, vals, f, n):
        f = self.check_feature(f)
        if ids is None:
            return []
        out = [TokenValue(self.token_str(t), float(v), int(t)) for t, v in zip(ids[f], vals[f])]
        return out[:n] if n is not None else out

    def top_activations(self, f: int, n: int | None = None) -> list[tuple[int, float]]:
        """``(row, activation)`` of the highest activations of ``f``, best first."""
        f = self.check_feature(f)
        keep = self.top_rows[f] >= 0
        pairs = list(zip(self.top_rows[f][keep].tolist(), self.top_acts[f][keep].tolist()))
        return pairs[:n] if n is not None else pairs

    def contexts(self, f: int, store, sae, n: int | None = None, before: int = 8, after: int = 4,
                 tokenizer=None) -> list[Context]:
        """The top activating contexts of ``f``, with the feature's activation on every token shown."""
        import torch

        out: list[Context] = []
        if tokenizer is None:
            tokenizer = _tokenizer_for(store)
        for row, act in self.top_activations(f, n):
            pairs = store.context(row, before=before, after=after)  # [(token_id, row)]
            rows = np.array([r for _, r in pairs], dtype=np.int64)
            with torch.no_grad():
                x = store.read_rows(self.layer, rows).to(sae.W_enc.device)  # [n_ctx, d_in]
                acts = sae.encode(x)[:, f].float().cpu().tolist()  # [n_ctx]
            seq_id, pos = _seq_pos(store, row)
            toks = tuple(_decode(t, self, tokenizer) for t, _ in pairs)
            focus = int(np.nonzero(rows == row)[0][0]) if (rows == row).any() else 0
            out.append(Context(row=row, seq_id=seq_id, pos=pos, activation=act, tokens=toks,
                               acts=tuple(acts), focus=focus))
        return out

    def row(self, f: int, score: float = math.nan, n: int = 5) -> FeatureRow:
        """The display/JSON row of feature ``f``."""
        f = self.check_feature(f)
        return FeatureRow(id=f, density=float(self.density[f]), max_act=float(self.max_act[f]),
                          mean_act=float(self.mean_act[f]), top_tokens=tuple(self.top_tokens(f, n)),
                          top_logits=tuple(self.top_logits(f, n)), score=float(score),
                          bottom_logits=tuple(self.bottom_logits(f, n)))

    def sort_values(self, key: str = "density") -> np.ndarray:
        """``[d_sae]`` the value a listing sorts by."""
        if key not in SORT_KEYS:
            raise TuiwbError(f"unknown sort key {key!r}: use one of {', '.join(SORT_KEYS)}")
        return {"density": self.density, "max": self.max_act, "mean": self.mean_act,
                "id": np.arange(self.d_sae, dtype=np.float64)}[key]

    def order(self, key: str = "density", descending: bool | None = None) -> np.ndarray:
        """Feature ids sorted by ``key`` (descending, except ``id`` ascending); ties by id."""
        vals = self.sort_values(key)
        desc = key != "id" if descending is None else descending
        return np.lexsort((np.arange(self.d_sae), -vals if desc else vals))

    def rows(self, ids, scores=None, n: int = 5) -> list[FeatureRow]:
        ids = [int(i) for i in ids]
        if scores is None:
            return [self.row(i, n=n) for i in ids]
        return [self.row(i, float(s), n=n) for i, s in zip(ids, scores)]

    def listing(self, key: str = "density", top: int | None = None, n: int = 5) -> list[FeatureRow]:
        """The first ``top`` features by ``key``, the sort value as the score."""
        ids = self.order(key)[:top]
        return self.rows(ids, self.sort_values(key)[ids], n=n)

    # ---- persistence ------------------------------------------------------------------------------
    _ARRAYS = ("density", "mean_act", "max_act", "total_act", "hist", "hist_edges", "top_rows", "top_acts",
               "tok_ids", "tok_sum", "tok_fires", "token_counts", "logit_ids", "logit_vals",
               "neg_logit_ids", "neg_logit_vals")

    def save(self, sae_dir: str | Path, key: dict) -> None:
        """Write ``features.npz`` + ``features.json`` into ``sae_dir`` atomically."""
        sae_dir = Path(sae_dir)
        arrays = {k: getattr(self, k) for k in self._ARRAYS if getattr(self, k) is not None}
        vocab_ids = np.array(sorted(self.vocab), dtype=np.int64)
        arrays["vocab_ids"] = vocab_ids
        arrays["vocab_strs"] = np.array([self.vocab[int(i)] for i in vocab_ids], dtype=np.str_)
        meta = {"version": CACHE_VERSION, "key": key, "layer": self.layer, "n_tokens": self.n_tokens,
                "d_sae": self.d_sae, "n_dead": self.n_dead, "has_logits": self.has_logits}
        write_file(sae_dir / "features.npz", lambda fh: np.savez(fh, **arrays), binary=True)
        write_text(sae_dir / "features.json", json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, sae_dir: str | Path) -> tuple[FeatureStats, dict]:
        """Read the cache of ``sae_dir``: ``(stats, meta)``; raises ``TuiwbError`` if absent/corrupt."""
        sae_dir = Path(sae_dir)
        try:
            meta = json.loads((sae_dir / "features.json").read_text())
            with np.load(sae_dir / "features.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # truncated or corrupt
            raise TuiwbError(f"no readable feature stats in {sae_dir} ({e}): delete features.npz and "
                             "features.json to compute them again") from e
        vocab = dict(zip(arrays.pop("vocab_ids").tolist(), arrays.pop("vocab_strs").tolist()))
        return cls(layer=int(meta["layer"]), n_tokens=int(meta["n_tokens"]), vocab=vocab, **arrays), meta


def _seq_pos(store, row: int) -> tuple[int, int]:
    """``(seq_id, pos)`` of a global row (the store's own lookup when it has one)."""
    if hasattr(store, "seq_ids") and hasattr(store, "positions"):
        return int(store.seq_ids([row])[0]), int(store.positions([row])[0])
    seq_len = int(store.seq_len)
    return row // seq_len, row % seq_len


def _decode(token_id: int, stats: FeatureStats, tokenizer) -> str:
    if tokenizer is not None:
        return tokenizer.decode([int(token_id)])
    return stats.token_str(token_id)


def _tokenizer_for(store):
    """The tokenizer of the store's model when it is a local checkpoint; else None (ids shown)."""
    model_id = getattr(store, "model_id", None)
    if not model_id or not Path(str(model_id)).is_dir():
        return None
    return _load_tokenizer(str(Path(str(model_id)).resolve()))


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str):
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except Exception:  # noqa: BLE001 — a missing tokenizer only costs readable token names
        return None


_REEXPORTS = {
    "compute_feature_stats": "tuiwb.features.compute", "StatsAccumulator": "tuiwb.features.compute",
    "load_or_compute": "tuiwb.features.cache", "cache_key": "tuiwb.features.cache",
    "feature_stats": "tuiwb.features.cache",
    "decoder_logits": "tuiwb.features.logit_effects", "logit_effects": "tuiwb.features.logit_effects",
    "with_logit_effects": "tuiwb.features.logit_effects",
    "search_by_token": "tuiwb.features.search", "filter_density": "tuiwb.features.search",
    "search_by_id": "tuiwb.features.search", "resolve_token": "tuiwb.features.search", "Hits": "tuiwb.features.search",
    "contrast": "tuiwb.features.contrast", "contrast_effect": "tuiwb.features.contrast", "ContrastResult": "tuiwb.features.contrast",
    "EffectResult": "tuiwb.features.contrast", "EffectConfig": "tuiwb.features.contrast",
}


def __getattr__(name):  # the rest of the public API, lazily (those modules import this one)
    if name in _REEXPORTS:
        import importlib

        return getattr(importlib.import_module(_REEXPORTS[name]), name)
    raise AttributeError(f"module 'tuiwb.features' has no attribute {name!r}")


def with_vocab(stats: FeatureStats, tokenizer) -> FeatureStats:
    """Decode every token id the stats mention, so they render without the tokenizer."""
    from dataclasses import replace

    if tokenizer is None:
        return stats
    ids = [stats.tok_ids.ravel()]
    ids += [a.ravel() for a in (stats.logit_ids, stats.neg_logit_ids) if a is not None]
    wanted = {int(i) for i in np.unique(np.concatenate(ids)) if i >= 0} - set(stats.vocab)
    if not wanted:
        return stats
    vocab = dict(stats.vocab)
    vocab.update({i: tokenizer.decode([i]) for i in sorted(wanted)})
    return replace(stats, vocab=vocab)
