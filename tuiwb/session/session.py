"""The live lab object: one model, its SAEs and a set of switchable patches.

The TUI, the companion server, notebooks and ``tuiwb logits`` are thin clients of a ``Session``;
none of them computes anything the Session does not expose. Everything that touches the model runs
under one re-entrant lock, so worker threads may call any method concurrently (calls serialise;
"latest request wins" is the client's policy).

Patches (see ``tuiwb.lora_patch``) are applied without reloading anything:

* hook patches: one forward hook per edited layer, present only while a hook patch on that layer
  is on; it adds the exact SAE-gated deltas of the enabled patches, all gated on the same h;
* LoRA patches: PEFT adapters injected once (``tuiwb.lora_rack``); toggling changes the active set.

With every patch off no hook is registered and no adapter is active, so the model computes
bit-for-bit what it computed before the Session touched it. Baseline (unpatched) logits are cached
per prompt, so a toggle costs one patched forward, not two.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from tuiwb.choices import DEFAULT_DEVICE
from tuiwb.errors import TuiwbError, warn
from tuiwb.model.logits import LogitsResult, kl_divergence, next_token_logits, top_k
from tuiwb.patch.config import FitConfig, check_rank
from tuiwb.patch.edit import (FeatureEdit, Patch, check_name, default_name, edit_hook, format_mode, make_edit,
                              parse_mode)
from tuiwb.patch.io import IDENTITY_KEYS, lora_manifest_fields
from tuiwb.patch.lora_fit import fit_lora, fit_sequences, mean_kl
from tuiwb.patch.rack import LoraRack
from tuiwb.session.outputs import SessionOutputs
from tuiwb.sae.compat import check_same_model, check_sae_fits, sae_layer

_BASELINE_CACHE = 256


class Session(SessionOutputs):
    """A model with SAEs and switchable patches. Thread-safe: one RLock around model use."""

    def __init__(self, loaded, saes: dict | None = None, acts=None, *, fit: FitConfig | None = None,
                 data: str | Path | None = None):
        self._lock = threading.RLock()
        self.loaded = loaded
        self.saes: dict[int, torch.nn.Module] = {}
        for layer, sae in (saes or {}).items():
            self._attach_sae(int(layer), sae)
        self.acts = acts
        check_same_model(loaded, acts, "the activation store was traced from")
        self.fit = fit or FitConfig()
        """Default settings of LoRA fits (``build_lora``)."""
        self.data = data
        """Default text file for LoRA fits when there is no activation store."""
        self._patches: OrderedDict[str, Patch] = OrderedDict()
        self._edits: dict[str, FeatureEdit] = {}  # name → exact edit (hook patches, and LoRA ones with an SAE)
        self._lora_meta: dict[str, dict] = {}  # name → manifest fields of a LoRA patch
        self._layer_edits: dict[int, tuple[FeatureEdit, ...]] = {}
        self._handles: dict[int, torch.utils.hooks.RemovableHandle] = {}
        self._rack: LoraRack | None = None
        self._suspended = 0  # depth of nested ``unpatched`` blocks
        self._baseline: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self._stats: dict[tuple, object] = {}  # (layer, id(sae), StatsConfig) → FeatureStats
        self._prompt = ""
        self._subscribers: list = []  # callbacks of ``subscribe``
        self._origin = threading.local()  # who is making the current thread's changes (``changes_from``)
        self._forced: frozenset[str] | None = None  # patches one generation step runs with (``_patch_state``)
        self._continuations: OrderedDict[tuple, tuple[list[int], bool]] = OrderedDict()  # unpatched greedy runs
        self._scorecards: dict[str, object] = {}  # patch name → its last ``Scorecard``

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def open(cls, model, saes_dir=None, acts=None, lora_dirs: Sequence = (), quant: str | None = None,
             device: str = DEFAULT_DEVICE, dtype: str | None = None, trust_remote_code: bool = False,
             data: str | Path | None = None, allow_pickle: bool = False,
             device_map: str | dict | None = None) -> "Session":
        """Load ``model`` (path or hub id), the SAEs under ``saes_dir``, an activation store and
        existing ``lora/NAME`` patches (enabled). Mismatched SAEs or patches are refused."""
        from tuiwb.model.loading import load_model

        loaded = load_model(str(model), quant=quant, device=device, dtype=dtype,
                            trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, device_map=device_map)
        saes = None
        if saes_dir is not None:
            from tuiwb.sae.io import load_saes

            if not Path(saes_dir).is_dir():
                raise TuiwbError(f"SAE directory {saes_dir} does not exist: point `saes_dir` at a saes/ directory")
            saes = load_saes(saes_dir)  # on the CPU: _attach_sae moves each to its layer's device
        if isinstance(acts, (str, Path)):
            from tuiwb.trace.store import ActivationStore

            acts = ActivationStore(acts)
        session = cls(loaded, saes, acts, data=data)
        for d in lora_dirs:
            session.attach_lora(d)
        return session

    def _attach_sae(self, layer: int, sae) -> None:
        self.loaded.check_layer(layer)
        check_sae_fits(sae, loaded=self.loaded, layer=layer, splice=True)
        sae.to(self.loaded.layer_device(layer))  # on its block's device, also when a device map splits the model
        self.saes[layer] = sae

    def sae(self, layer: int):
        """The SAE at ``layer``; a clear error naming the layers that have one."""
        if layer not in self.saes:
            have = ", ".join(str(k) for k in sorted(self.saes)) or "none"
            raise TuiwbError(f"no SAE attached at layer {layer} (SAEs at layers: {have}): attach (`saes`) a "
                             f"saes/layer_{layer}/ directory")
        return self.saes[layer]

    def atomic(self):
        """The Session's re-entrant lock: several calls as one step (no toggle from another thread
        lands in between). Every method takes it itself; clients only need it to group calls."""
        return self._lock

    # ------------------------------------------------------------------------ shared state, events
    @property
    def prompt(self) -> str:
        """The current prompt every client shows (the TUI's editor, the companion page)."""
        return self._prompt

    @prompt.setter
    def prompt(self, text: str) -> None:
        text = str(text)
        with self._lock:
            if text == self._prompt:
                return
            self._prompt = text
            self._publish({"type": "prompt", "text": text})

    def subscribe(self, callback: Callable[[dict], None]) -> Callable[[], None]:
        """Call ``callback(event)`` on every change of the shared state; returns ``unsubscribe()``.

        Events: ``{"type": "patches"}`` (a patch toggled, added or removed) and ``{"type": "prompt",
        "text": ...}``, each with ``"origin"``: what ``changes_from`` named for the thread that made the
        change (None: nobody said). The callback runs in that thread, with the Session's lock held, so it
        must only hand the event on (post a message, ``call_soon_threadsafe``), never block or wait for
        another thread that takes the lock.
        """
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)
        return unsubscribe

    @contextlib.contextmanager
    def changes_from(self, origin: str):
        """Label the changes this thread makes inside the block (events carry ``origin``), so a client
        can tell its own changes from everybody else's."""
        before = getattr(self._origin, "name", None)
        self._origin.name = origin
        try:
            yield
        finally:
            self._origin.name = before

    def _publish(self, event: dict) -> None:
        event = {**event, "origin": getattr(self._origin, "name", None)}
        for cb in list(self._subscribers):
            try:
                cb(event)
            except Exception as e:  # noqa: BLE001 — one broken client must not break a toggle
                warn(f"a Session subscriber failed: {type(e).__name__}: {e}")

    # ---------------------------------------------------------------------------------- patches
    @property
    def patches(self) -> list[Patch]:
        """The patches in the order they were added (immutable snapshots)."""
        with self._lock:
            return list(self._patches.values())

    def patch(self, name: str) -> Patch:
        with self._lock:
            if name not in self._patches:
                have = ", ".join(self._patches) or "none"
                raise TuiwbError(f"no patch named {name!r} (patches: {have})")
            return self._patches[name]

    def add_patch(self, name: str | None = None, layer: int | None = None, features: Iterable[int] = (),
                  mode: str = "ablate", method: str = "hook", rank: int = 8, *, enabled: bool = True,
                  data: str | Path | None = None, progress: bool = False) -> Patch:
        """Add a patch on ``features`` of the SAE at ``layer``; ``method="lora"`` fits it right away."""
        if layer is None:
            raise TuiwbError("add_patch needs a layer")
        with self._lock:
            alpha = parse_mode(mode)
            check_rank(rank)
            edit = make_edit(self.sae(int(layer)), features, alpha)
            name = check_name(name) if name is not None else default_name(int(layer), edit.features, mode)
            if name in self._patches:
                raise TuiwbError(f"a patch named {name!r} already exists: choose another name")
            if method not in ("hook", "lora"):
                raise TuiwbError(f"bad patch method {method!r}: use 'hook' or 'lora'")
            self._edits[name] = edit
            self._patches[name] = Patch(name=name, layer=int(layer), features=list(edit.features),
                                        mode=format_mode(alpha), method="hook", enabled=False, rank=rank)
            if method == "lora":
                try:
                    self.build_lora(name, rank=rank, data=data, progress=progress)
                except BaseException:
                    self._patches.pop(name, None)
                    self._edits.pop(name, None)
                    raise
            if enabled:
                self.toggle(name, True)
            else:
                self._publish({"type": "patches"})
            return self._patches[name]

    def remove_patch(self, name: str) -> None:
        with self._lock:
            self.patch(name)
            del self._patches[name]
            self._edits.pop(name, None)
            self._lora_meta.pop(name, None)
            if self._rack is not None and name in self._rack.names:
                self._rack.remove(name)
            self._sync()
            self._publish({"type": "patches"})

    def toggle(self, name: str, on: bool | None = None) -> bool:
        """Switch a patch on/off (flip when ``on`` is None); returns its new state. No reload."""
        with self._lock:
            p = self.patch(name)
            state = (not p.enabled) if on is None else bool(on)
            if state != p.enabled:
                self._patches[name] = replace(p, enabled=state)
                self._sync()
                self._publish({"type": "patches"})
            return state

    def set_enabled(self, names: Iterable[str]) -> None:
        """Enable exactly ``names`` and disable every other patch."""
        with self._lock:
            want = set(names)
            for n in want:
                self.patch(n)
            changed = any(p.enabled != (n in want) for n, p in self._patches.items())
            for n, p in self._patches.items():
                self._patches[n] = replace(p, enabled=n in want)
            self._sync()
            if changed:
                self._publish({"type": "patches"})

    @property
    def active(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(n for n, p in self._patches.items() if p.enabled)

    def _sync(self) -> None:
        """Make hooks and active adapters match the patches' enabled flags (all off while suspended)."""
        layers: dict[int, list[FeatureEdit]] = {}
        lora_on = []
        for n, p in self._patches.items():
            on = p.enabled if self._forced is None else n in self._forced
            if not on or self._suspended:
                continue
            if p.method == "hook":
                layers.setdefault(p.layer, []).append(self._edits[n])
            else:
                lora_on.append(n)
        self._layer_edits = {k: tuple(v) for k, v in layers.items()}
        for layer in list(self._handles):
            if layer not in self._layer_edits:
                self._handles.pop(layer).remove()
        for layer in self._layer_edits:
            if layer not in self._handles:
                self._handles[layer] = self.loaded.add_hook(
                    layer, edit_hook(lambda layer=layer: self._layer_edits.get(layer, ())))
        if self._rack is not None:
            self._rack.set_active(lora_on)

    @contextlib.contextmanager
    def unpatched(self):
        """Every patch off for the ``with`` block (flags untouched), then restored. Nests; toggles
        made inside take effect when the outermost block ends."""
        with self._lock:
            self._suspended += 1
            self._sync()
            try:
                yield
            finally:
                self._suspended -= 1
                self._sync()

    @contextlib.contextmanager
    def _only(self, hook_edit: FeatureEdit | None = None, lora: str | None = None):
        """Inside ``unpatched``: just one exact edit or just one LoRA adapter on."""
        hooks = [(sae_layer(hook_edit.sae), edit_hook(lambda: (hook_edit,)))] if hook_edit is not None else []
        if lora is not None:
            self._rack.set_active((lora,))
        try:
            with self.loaded.hooks(hooks):
                yield
        finally:
            if lora is not None:
                self._rack.set_active(())

    # ---------------------------------------------------------------------------------- queries
    def _forward_logits(self, ids: list[int]) -> torch.Tensor:
        return next_token_logits(self.loaded, ids)  # [vocab], under the patches now on

    def _baseline_logits(self, ids: list[int]) -> torch.Tensor:
        key = tuple(ids)
        if key in self._baseline:
            self._baseline.move_to_end(key)
            return self._baseline[key]
        with self.unpatched():
            logits = self._forward_logits(ids)  # [vocab]
        self._baseline[key] = logits
        while len(self._baseline) > _BASELINE_CACHE:
            self._baseline.popitem(last=False)
        return logits

    def next_token_logits(self, prompt: str, patched: bool = True) -> torch.Tensor:
        """Next-token logits ``[vocab]`` of ``prompt`` with the enabled patches (or none)."""
        with self._lock:
            ids = self.loaded.encode(prompt)
            if not patched or not self.active:
                return self._baseline_logits(ids)
            return self._forward_logits(ids)

    def logits(self, prompt: str, top: int = 10) -> LogitsResult:
        """Top-``top`` next tokens unpatched and patched, their KL, and the call's latency."""
        if top < 1:
            raise TuiwbError("top must be at least 1")
        with self._lock:
            t0 = time.perf_counter()
            ids = self.loaded.encode(prompt)
            base = self._baseline_logits(ids)  # [vocab]
            active = self.active
            patched = self._forward_logits(ids) if active else base  # [vocab]
            kl = kl_divergence(base, patched) if active else 0.0
            latency = (time.perf_counter() - t0) * 1e3
            b_top = top_k(self.loaded, base, top)
            p_top = top_k(self.loaded, patched, top) if active else b_top
            return LogitsResult(prompt=prompt, baseline=b_top, patched=p_top, kl=max(kl, 0.0),
                                latency_ms=latency, active=active)

    def feature_acts(self, prompt: str, layer: int, patched: bool = True) -> tuple[list[str], torch.Tensor]:
        """Tokens of ``prompt`` and the SAE activations at ``layer``: ``[pos, d_sae]`` float32 on CPU.

        With ``patched`` the residual is read after the enabled patches (so an ablated feature shows
        what is left of it); otherwise from the unpatched model.
        """
        with self._lock:
            sae = self.sae(layer)
            ids = self.loaded.encode(prompt)
            ctx = contextlib.nullcontext() if patched else self.unpatched()
            with ctx, torch.inference_mode():
                h = self.loaded.run_to(torch.tensor([ids], device=self.loaded.device), layer)  # [1, pos, d]
                acts = sae.encode(h[0].to(sae.W_enc.dtype))  # [pos, d_sae]
            tokens = [self.loaded.token_str(i) for i in ids]
            return tokens, acts.float().cpu()

    def stats(self, layer: int, *, compute: bool = True, refresh: bool = False, cfg=None, progress=False):
        """Per-feature statistics of the SAE at ``layer``: the one copy every client reads.

        Fresh or nothing. Kept in memory for this very SAE; otherwise read from the cache next to the
        SAE (``features.npz``) when its key still matches the SAE files (and the activation store),
        else — with ``compute`` — computed over the activation store and cached there. With
        ``compute=False`` a missing or stale cache gives None: nothing here starts a long pass.
        """
        from tuiwb.features.cache import cached_stats, load_or_compute
        from tuiwb.features.compute import compute_feature_stats
        from tuiwb.features.stats import StatsConfig

        with self._lock:
            sae = self.sae(layer)
            cfg = cfg or StatsConfig()
            key = (int(layer), id(sae), cfg)
            if not refresh and key in self._stats:
                return self._stats[key]
            sae_dir = sae.source_dir
            if self.acts is not None and sae_dir is not None:
                stats = load_or_compute(sae_dir, self.acts, self.loaded, sae=sae, cfg=cfg, progress=progress,
                                        refresh=refresh, compute=compute)
            elif self.acts is not None:
                stats = compute_feature_stats(sae, self.acts, self.loaded, progress=progress, cfg=cfg) \
                    if compute else None
            else:
                stats = cached_stats(sae_dir) if sae_dir is not None and not refresh else None
                if stats is None and compute:
                    raise TuiwbError("feature stats need activations: open the session with an activation "
                                     "store (`acts`)")
            if stats is not None:
                self._stats = {k: v for k, v in self._stats.items() if k[0] != int(layer)}
                self._stats[key] = stats
            return stats

    def contrast(self, layer: int, positive: Sequence[str], negative: Sequence[str] = (),
                 target: str | None = None):
        """Features of the SAE at ``layer`` that fire on ``positive`` prompts more than on ``negative``
        ones, or with ``target`` by causal effect on that token (``tuiwb.contrast``). Returns ``Hits``,
        best first, measured on the unpatched model. Runs under the lock: the search installs hooks
        on the shared model."""
        from tuiwb.features import contrast as _contrast

        sae = self.sae(layer)
        with self._lock, self.unpatched():
            if target:
                return _contrast.find_feature_set(self.loaded, sae, list(positive), target,
                                                  list(negative) or None).hits
            return _contrast.contrast(self.loaded, sae, list(positive), list(negative)).hits

    def provenance(self, layer: int, feature: int, prompt: str | None = None, pos: int | None = None,
                   depth: int = 2, top: int = 5, method: str = "grad", **kwargs):
        """Upstream attribution graph of ``feature`` at ``layer`` (``tuiwb.provenance``), on the model
        as currently patched; without a prompt, the static (virtual-weight) view."""
        from tuiwb.provenance.graph import build_graph

        with self._lock:
            if "stats" not in kwargs:  # labels from stats already at hand: never a stats pass here
                layers = [L for L in range(layer - depth, layer + 1) if L in self.saes]
                kwargs["stats"] = {L: s for L in layers if (s := self.stats(L, compute=False)) is not None}
            return build_graph(self.loaded, self.saes, layer, feature, prompt, pos=pos, depth=depth, top=top,
                               method=method, **kwargs)

    # ------------------------------------------------------------------------------------- LoRA
    def _sequences(self, split: str, data, max_tokens: int) -> tuple[list[list[int]], str]:
        """Token sequences to fit on (``train``) or measure fidelity on (``heldout``), and their source."""
        return fit_sequences(self.loaded, self.acts, data if data is not None else self.data, split, max_tokens)

    def build_lora(self, name: str, rank: int | None = None, data=None, fit: FitConfig | None = None,
                   progress: bool = False, fidelity_tokens: int = 4096, prompts=None) -> float:
        """Turn hook patch ``name`` into a fitted LoRA patch in place (same name, same on/off state).

        ``prompts``: optional ``(trigger prompts, clean prompts)`` of the search that found the patch,
        weighted into the fit data (``with_trigger_contexts``: generic text rarely holds the trigger).
        Returns its fidelity: mean KL(hook ‖ LoRA) over held-out next-token distributions.
        """
        with self._lock:
            p = self.patch(name)
            if p.method == "lora":
                raise TuiwbError(f"patch {name!r} is already a LoRA patch")
            cfg = fit or self.fit
            if rank is not None:
                cfg = replace(cfg, rank=check_rank(rank))
            edit = self._edits[name]
            with self.unpatched():
                seqs, src = self._sequences("train", data, cfg.fit_tokens)
                if prompts:
                    from tuiwb.patch.lora_fit import with_trigger_contexts

                    seqs = with_trigger_contexts(self.loaded, seqs, prompts[0], clean=prompts[1])
                report = fit_lora(self.loaded, edit, seqs, cfg, progress=progress)
                if self._rack is None:
                    self._rack = LoraRack(self.loaded.model)
                self._rack.add(name, report.factors)
                try:
                    held, held_src = self._sequences("heldout", data, fidelity_tokens)
                    fid = mean_kl(self.loaded, held, lambda: self._only(hook_edit=edit),
                                  lambda: self._only(lora=name))
                except BaseException:
                    self._rack.remove(name)  # leave the patch as it was: a hook patch
                    raise
            self._lora_meta[name] = lora_manifest_fields(p, edit, report, fid, src, held_src)
            self._patches[name] = replace(p, method="lora", rank=cfg.rank, fidelity=fid)
            self._baseline.clear()  # the injected wrappers compute the same, but stay strictly safe
            self._continuations.clear()
            self._sync()
            self._publish({"type": "patches"})  # its kind is now "lora"
            return fid

    def measure_fidelity(self, name: str, data=None, tokens: int = 4096) -> float:
        """Re-measure a LoRA patch's fidelity (needs the SAE of its layer)."""
        with self._lock:
            p = self.patch(name)
            if p.method != "lora" or name not in self._edits:
                raise TuiwbError(f"patch {name!r} is not a LoRA patch with an attached SAE")
            with self.unpatched():
                held, _ = self._sequences("heldout", data, tokens)
                return mean_kl(self.loaded, held, lambda: self._only(hook_edit=self._edits[name]),
                               lambda: self._only(lora=name))

    def save_lora(self, name: str, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write LoRA patch ``name`` as ``out/`` (manifest + PEFT adapter)."""
        from tuiwb.patch.io import save_patch

        with self._lock:
            p = self.patch(name)
            if p.method != "lora":
                raise TuiwbError(f"patch {name!r} is a hook patch: build its LoRA first (build_lora)")
            path = save_patch(out, self.loaded, self._rack.factors(name), self._lora_meta[name],
                              overwrite=overwrite)
            self._patches[name] = replace(self._patches[name], source=str(path))
            return path

    def attach_lora(self, path: str | Path, enabled: bool = True, name: str | None = None) -> Patch:
        """Attach an existing ``lora/NAME`` patch (refused if made for another base model)."""
        from tuiwb.patch.io import check_base, check_modules, read_patch

        with self._lock:
            stored = read_patch(path)
            m = stored.manifest
            check_base(m, self.loaded, str(path))
            check_modules(stored, self.loaded)
            name = check_name(name or m.get("name") or Path(path).name)
            if name in self._patches:
                raise TuiwbError(f"a patch named {name!r} is already attached: pass another name")
            layer, mode = int(m["layer"]), str(m.get("mode", "ablate"))
            if self._rack is None:
                self._rack = LoraRack(self.loaded.model)
            self._rack.add(name, stored.factors)
            if layer in self.saes:
                built_on = (m.get("sae") or {}).get("weights_hash")
                here = self.saes[layer].cfg.weights_hash
                if built_on and here and built_on != here:
                    warn(f"{path} was built on another SAE than the one attached at layer {layer}: its feature "
                         f"ids {m.get('features')} may mean other features here (the LoRA itself still applies)")
                try:
                    self._edits[name] = make_edit(self.saes[layer], m.get("features", []), parse_mode(mode))
                except TuiwbError:
                    pass  # the SAE here is another one: the patch still works, fidelity can't be re-measured
            self._lora_meta[name] = {k: v for k, v in m.items() if k not in IDENTITY_KEYS}
            self._patches[name] = Patch(name=name, layer=layer, features=[int(f) for f in m.get("features", [])],
                                        mode=mode, method="lora", enabled=False, rank=stored.factors.rank,
                                        fidelity=m.get("fidelity"), source=str(path))
            if enabled:
                self.toggle(name, True)
            else:
                self._publish({"type": "patches"})
            return self._patches[name]

    def export(self, names: Iterable[str], out: str | Path, *, overwrite: bool = False) -> Path:
        """Merge the LoRA patches ``names`` into one PEFT adapter at ``out`` for production."""
        from tuiwb.patch.io import export_merged

        with self._lock:
            items = []
            for n in names:
                p = self.patch(n)
                if p.method != "lora":
                    raise TuiwbError(f"patch {n!r} is a hook patch: build its LoRA before exporting")
                items.append(({**self._lora_meta[n], "name": n}, self._rack.factors(n)))
            return export_merged(out, self.loaded, items, overwrite=overwrite)

    def close(self) -> None:
        """Remove every hook the Session installed (LoRA wrappers stay, inactive)."""
        with self._lock:
            for p in list(self._patches.values()):
                if p.enabled:
                    self._patches[p.name] = replace(p, enabled=False)
            self._sync()
