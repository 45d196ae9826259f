"""What the patched model *does*, beside what it predicts next: continuations, patch scorecards and
dose–response sweeps (issue 13). A mixin of :class:`tuiwb.session.session.Session`, kept apart because
it is one idea built on the Session's state (its lock, patches, baseline cache), not part of that state.

Every method here takes the Session's lock for each model call, as the rest of the Session does.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Sequence

from tuiwb.errors import TuiwbError
from tuiwb.model.config import GenerateConfig
from tuiwb.model.generate import stream_tokens
from tuiwb.patch.lora_fit import mean_kl
from tuiwb.patch.sweep import DEFAULT_ALPHAS

CONTINUATION_CACHE = 256
"""Unpatched greedy continuations kept (prompt ids → tokens), oldest dropped first."""


class SessionOutputs:
    """Continuations, scorecards and sweeps; needs the Session's ``_lock``, ``_patches``, ``_sync``,
    ``_continuations`` and ``_scorecards`` (set in ``Session.__init__``)."""

    # ---------------------------------------------------------------------- continuations (issue 13)
    def generate(self, prompt: str, max_new_tokens: int = 24, patched: bool = True, greedy: bool = True,
                 seed: int | None = None, *, temperature: float = 1.0, ignore_eos: bool = False) -> Iterator[int]:
        """Stream the continuation of ``prompt``: new token ids, one by one, with the KV cache.

        ``patched``: with the patches on now (the set is fixed when this is called: a toggle later
        does not change a running generation); else unpatched. Every step holds the lock for one
        forward only, so other calls (the logit pane) get in between steps. Closing the iterator
        (or dropping it) stops the generation at the next token. Greedy unpatched runs are cached.
        """
        cfg = GenerateConfig(max_new_tokens=max_new_tokens, sample=not greedy, temperature=temperature, seed=seed,
                             ignore_eos=ignore_eos)
        with self._lock:
            ids = self.loaded.encode(prompt)
            names = self.active if patched else ()
        return self._continue(ids, names, cfg)

    def _continue(self, ids: list[int], names: tuple[str, ...], cfg: GenerateConfig) -> Iterator[int]:
        key = (tuple(ids), cfg.ignore_eos) if not names and not cfg.sample else None
        if key is not None and key in self._continuations:
            done, complete = self._continuations[key]
            if complete or len(done) >= cfg.max_new_tokens:
                yield from done[: cfg.max_new_tokens]
                return
        out: list[int] = []
        for tid in stream_tokens(self.loaded, ids, cfg, step=lambda: self._patch_state(names)):
            out.append(tid)
            yield tid
        if key is not None:
            complete = len(out) < cfg.max_new_tokens  # ended by EOS or the context: longer runs end alike
            with self._lock:
                self._continuations[key] = (out, complete)
                while len(self._continuations) > CONTINUATION_CACHE:
                    self._continuations.popitem(last=False)

    @contextlib.contextmanager
    def _patch_state(self, names: tuple[str, ...]):
        """The lock held and exactly ``names`` on (``()``: none) for the block; then the state before.

        The user's on/off flags are not touched (``_forced`` overrides them in ``_sync``), so a
        generation step never looks like a toggle to anyone watching the patches.
        """
        with self._lock:
            missing = [n for n in names if n not in self._patches]
            if missing:
                raise TuiwbError(f"patch {missing[0]!r} was removed while a generation used it")
            on_now = () if self._suspended else tuple(n for n, p in self._patches.items() if p.enabled)
            if self._forced is None and set(on_now) == set(names):
                yield
                return
            forced, suspended = self._forced, self._suspended
            self._forced, self._suspended = frozenset(names), 0
            self._sync()
            try:
                yield
            finally:
                self._forced, self._suspended = forced, suspended
                self._sync()

    def continuation(self, prompt: str, max_new_tokens: int = 24, patched: bool = True) -> list[int]:
        """The whole greedy continuation (``generate`` collected)."""
        return list(self.generate(prompt, max_new_tokens=max_new_tokens, patched=patched))

    # --------------------------------------------------------------------------- scorecard (issue 13)
    def evaluate_patch(self, names: Iterable[str], positive: Sequence[str], negative: Sequence[str] = (),
                       target: str | None = None, max_new_tokens: int = 16):
        """The ``Scorecard`` of the patches ``names`` (on together) over prompt sets A = ``positive``
        (where they should act) and B = ``negative`` (where they should not); see
        ``tuiwb.patch.scorecard``. Kept as each patch's last scorecard (``scorecard(name)``) and, for
        a LoRA patch, written into its manifest by ``save_lora``."""
        from tuiwb.errors import ParamError
        from tuiwb.features.search import resolve_token
        from tuiwb.patch.scorecard import score

        names = tuple(dict.fromkeys(names))
        if not names:
            raise ParamError("names", "needs at least one patch")
        if not positive:
            raise ParamError("positive", "needs at least one prompt")
        cfg = GenerateConfig(max_new_tokens=max_new_tokens)
        with self._lock:
            patches = [self.patch(n) for n in names]
            target_id = resolve_token(target, self.loaded.tokenizer) if target else None
            pos = [self.loaded.encode(t) for t in positive]
            neg = [self.loaded.encode(t) for t in negative]

            def logits(ids, patched):
                if not patched:
                    return self._baseline_logits(ids)
                with self._patch_state(names):
                    return self._forward_logits(ids)

            def continuation(ids, patched):
                return list(self._continue(ids, names if patched else (), cfg))

            def fidelity():
                out = {}
                for p in patches:
                    if p.method == "lora" and p.name in self._edits:
                        with self.unpatched():
                            out[p.name] = mean_kl(self.loaded, pos + neg,
                                                  lambda p=p: self._only(hook_edit=self._edits[p.name]),
                                                  lambda p=p: self._only(lora=p.name))
                return out

            card = score(names, target, pos, neg, logits, continuation, cfg.max_new_tokens, target_id, fidelity)
            for p in patches:
                self._scorecards[p.name] = card
                if p.method == "lora" and p.name in self._lora_meta:
                    self._lora_meta[p.name]["scorecard"] = card.to_json()
            return card

    def scorecard(self, name: str):
        """The last ``Scorecard`` that included patch ``name`` (None: never evaluated)."""
        with self._lock:
            return self._scorecards.get(name)

    # ------------------------------------------------------------------------ dose–response (issue 13)
    def sweep(self, prompt: str, layer: int, feature: int, alphas: Sequence[float] = DEFAULT_ALPHAS,
              target: str | None = None):
        """Dose–response of ``feature`` at ``layer``: per α of ``scale=α`` on it alone (on the
        unpatched model), P(target) — or P(the unpatched top token) — and the KL to the unpatched
        next-token distribution. A ``tuiwb.patch.sweep.Sweep``."""
        from tuiwb.features.search import resolve_token
        from tuiwb.patch.edit import check_features
        from tuiwb.patch.sweep import Sweep, check_alphas, dose_response

        alphas = check_alphas(alphas)
        with self._lock:
            sae = self.sae(int(layer))
            feature = check_features(sae, [feature])[0]
            target_id = resolve_token(target, self.loaded.tokenizer) if target else None
            ids = self.loaded.encode(prompt)
            base = self._baseline_logits(ids)  # [vocab]
            with self.unpatched():
                tid, rows = dose_response(self.loaded, sae, ids, feature, alphas, base, target_id)
            return Sweep(prompt=prompt, layer=int(layer), feature=int(feature),
                         target=target if target else self.loaded.token_str(tid), target_id=tid, rows=rows)
