"""Train SAEs on recorded activations with PyTorch Lightning (``tuiwb train``).

``train_saes(acts, layers, out, TrainConfig(...))`` trains one SAE per layer, one layer at a time,
and writes ``out/layer_N/`` (SAELens layout, see :mod:`tuiwb.sae_io`). Per layer:

1. a bounded random sample of training rows gives the fixed norm factor (average norm → sqrt(d))
   and ``b_dec``'s init (geometric median, or mean);
2. ``SAETrainModule`` (LightningModule) steps the objective of :mod:`tuiwb.sae_objective` on batches
   streamed by ``ActivationDataModule`` (:mod:`tuiwb.sae_data`) until ``tokens`` are spent, with
   linear warm-up and a final linear decay, decoder rows kept unit-norm (gradient projected, rows
   renormalised after every step), and a per-latent "tokens since last fired" counter that defines
   the dead latents AuxK revives; ``lr="auto"`` first picks the LR by short probes scored on
   held-out FVU (:mod:`tuiwb.sae.lr_search`); on CPU the thread count is re-timed as it runs
   (:mod:`tuiwb.sae.threads`);
3. held-out FVU / L0 / dead fraction appear in the progress bar every ``val_every`` steps;
4. the norm factor is folded back into the weights, final held-out metrics come from
   :func:`tuiwb.eval.evaluate`, and the SAE is saved with the training config and metrics.

Logging is local (``logger="csv"`` or ``"tensorboard"``); W&B only with ``wandb=True``, imported then.
``devices=N, strategy="ddp"`` trains data-parallel (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import pytorch_lightning as pl
import torch

from tuiwb.sae.io import save_sae
from tuiwb.errors import TuiwbError, warn
from tuiwb.atomic import check_writable, private_tempdir
from tuiwb.progress import as_progress
from tuiwb.sae.config import DEFAULT_LR, TrainConfig
from tuiwb.sae.metrics import ReconstructionSums
from tuiwb.sae.model import SAE, SAEConfig
from tuiwb.sae.objective import lr_lambda, step_loss
from tuiwb.sae.threads import ThreadPicker, thread_candidates, usable_cores

class SAETrainModule(pl.LightningModule):
    """Trains ``sae`` (in the normalised space: inputs are multiplied by ``scale``)."""

    def __init__(self, sae: SAE, cfg: TrainConfig, *, steps: int, scale: float, lr: float):
        super().__init__()
        self.sae, self.cfg, self.steps, self.scale = sae, cfg, steps, float(scale)
        self.lr = float(lr)  # the attribute Lightning's LR finder reads and sets
        self.register_buffer("since_fired", torch.zeros(sae.d_sae, dtype=torch.int64))  # tokens
        self.stats: dict[str, torch.Tensor | float] = {}
        self._log_every = 0
        self._val: ReconstructionSums | None = None

    # ---- training -------------------------------------------------------------------------------
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x = batch * self.scale  # [B, d_in]
        dead = self.since_fired >= self.cfg.dead_tokens  # [d_sae]
        l1 = self.cfg.l1 * min(1.0, (self.global_step + 1) / max(1.0, self.cfg.l1_warmup_fraction * self.steps))
        out = step_loss(self.sae, x, dead=dead, l1=l1, aux_k=self.cfg.aux_k, aux_coef=self.cfg.aux_coef)
        fired = out.fired
        n_tokens = x.shape[0]
        if self.trainer.world_size > 1:  # a latent is alive if it fired on any rank
            fired = self.trainer.strategy.reduce(fired.float(), reduce_op="sum") > 0
            n_tokens *= self.trainer.world_size
        self.since_fired.add_(n_tokens).masked_fill_(fired, 0)
        train = {"fvu": out.fvu, "l0": out.l0, "aux": out.aux, "dead": dead.float().mean()}
        self.stats.update(train)  # tensors: read (synced) only when the bar refreshes
        if self._log_every and self.global_step % self._log_every == 0:
            self.log_dict({f"train/{k}": v for k, v in train.items()}, on_step=True, on_epoch=False)
        return out.loss

    def on_before_optimizer_step(self, optimizer) -> None:
        self.sae.remove_parallel_decoder_grad()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.sae.normalize_decoder()

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.sae.parameters(), lr=self.lr, betas=(0.9, 0.999))
        total = self.steps
        warmup = max(1, round(self.cfg.warmup_fraction * total))
        decay_start = max(warmup, total - round(self.cfg.decay_fraction * total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, total, warmup, decay_start))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- periodic held-out metrics --------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = ReconstructionSums(self.sae.d_in, self.sae.d_sae, self.device)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._val.update(self.sae, batch * self.scale)  # [B, d_in], normalised like training

    def on_validation_epoch_end(self) -> None:
        v = self._val
        if self.trainer.world_size > 1:
            v.reduce(lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"))
        res = v.result()
        if not res:
            return
        self.stats["val_fvu"], self.stats["val_l0"], self.stats["val_dead"] = (
            res["fvu"], res["l0"], res["dead_fraction"])
        if self._log_every:
            self.log_dict({"val/fvu": self.stats["val_fvu"], "val/l0": self.stats["val_l0"],
                           "val/dead_fraction": self.stats["val_dead"]}, on_epoch=True)


# ---- orchestration ------------------------------------------------------------------------------
def resolve_layers(store, layers) -> list[int]:
    """``[2]``, ``[2, 3]``, ``"all"`` or ``["all"]`` → layers, each checked against the store."""
    from tuiwb.sae.data import check_layer

    if isinstance(layers, (int, str)):
        layers = [layers]
    out: list[int] = []
    for x in layers:
        if isinstance(x, str) and x.strip().lower() == "all":
            out.extend(store.layers)
            continue
        try:
            layer = int(x)
        except (TypeError, ValueError):
            raise TuiwbError(f"`layer` {x!r} is not a layer index: give an integer or 'all'") from None
        check_layer(store, layer)
        out.append(layer)
    if not out:
        raise TuiwbError("no layers to train: pass `layer` (N, several, or all)")
    return sorted(set(out))


def train_saes(acts_path: str | Path, layers, out_dir: str | Path, cfg: TrainConfig | None = None,
               progress: bool = True, overwrite: bool = False) -> dict[int, dict]:
    """Train one SAE per layer (one after the other) into ``out_dir/layer_N``; metrics per layer.

    An existing ``layer_N`` is replaced only with ``overwrite`` (its feature ids are what patches and
    notes refer to), with a warning naming the patches that were built on it. Under DDP only global
    rank 0 writes and returns metrics (other ranks return ``{}``).
    """
    from tuiwb.sae.data import open_store

    cfg = cfg or TrainConfig()
    store = open_store(acts_path)
    todo = resolve_layers(store, layers)
    cfg.d_sae_for(int(store.d_model))  # k ≤ d_sae, checked before any work
    out_dir = check_writable(Path(out_dir).expanduser(), "`out`")
    if out_dir.exists() and not out_dir.is_dir():
        raise TuiwbError(f"`out` {out_dir} is a file: give a directory (each layer goes to OUT/layer_N)")
    for layer in todo:
        _check_replace(out_dir / f"layer_{layer}", overwrite)
    if cfg.tokens > 2 * len(store):  # many epochs over little text: an SAE that memorises it
        warn(f"`tokens` {cfg.tokens:,} is {cfg.tokens / max(1, len(store)):.0f}× the {len(store):,} traced tokens: "
             "the SAEs will see the same text many times over; trace more text or lower `tokens`")
    results: dict[int, dict] = {}
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif _on_cpu(cfg):  # a sane count to start from (the picker refines it)
        torch.set_num_threads(max(1, usable_cores()))
    try:
        with _quiet_lightning():
            for layer in todo:
                metrics = train_layer(store, acts_path, layer, out_dir / f"layer_{layer}", cfg, progress=progress)
                if metrics:
                    results[layer] = metrics
    finally:
        torch.set_num_threads(threads)
    return results


def _check_replace(layer_dir: Path, overwrite: bool) -> None:
    """Refuse to replace an SAE unless asked; when asked, name the patches built on it."""
    if not layer_dir.exists():
        return
    if not overwrite:
        raise TuiwbError(f"{layer_dir} already holds an SAE: pass `overwrite=True` to replace it (patches and "
                         "notes that name its feature ids would then mean other features)")
    try:
        old = json.loads((layer_dir / "cfg.json").read_text()).get("tuiwb", {}).get("weights_hash")
    except (OSError, ValueError, AttributeError):
        old = None
    for manifest in _sibling_manifests(layer_dir.parent):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if old is not None and (m.get("sae") or {}).get("weights_hash") == old:
            warn(f"{manifest.parent} was built on {layer_dir}, which is being replaced: its feature ids will "
                 "refer to the new SAE's features; rebuild it after training")


def _sibling_manifests(saes_dir: Path):
    """Patch manifests near an SAE directory: ``../*/manifest.json`` and ``../*/*/manifest.json``."""
    root = saes_dir.parent
    yield from root.glob("*/manifest.json")
    yield from root.glob("*/*/manifest.json")


def train_layer(store, acts_path, layer: int, out: Path, cfg: TrainConfig, progress: bool = True) -> dict:
    """Train, fold, evaluate and save one layer's SAE; returns its final metrics (rank 0)."""
    from tuiwb.sae.data import (ActivationDataModule, check_layer, geometric_median, norm_scaling_factor, sample_rows)

    check_layer(store, layer)
    d = int(store.d_model)
    split = "train" if cfg.val_fraction > 0 else "all"
    init = sample_rows(store, layer, split, cfg.init_tokens, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if len(init) == 0:
        raise TuiwbError(f"no training rows for layer {layer} in {acts_path}: trace more text "
                         "or lower `val_fraction`")
    scale = norm_scaling_factor(init)
    pl.seed_everything(cfg.seed, verbose=False)
    sae = SAE(SAEConfig(d_in=d, d_sae=cfg.d_sae_for(d), architecture=cfg.arch,
                        k=cfg.k if cfg.arch == "topk" else None, hook_name=store.column(layer), layer=layer,
                        model_name=store.model_id, model_config_hash=store.config_hash,
                        model_fingerprint=store.fingerprint,
                        trace_manifest_hash=store.identity))
    with torch.no_grad():
        if cfg.b_dec_init == "geometric_median":
            sae.b_dec.copy_(geometric_median(init[:16384] * scale))
        elif cfg.b_dec_init == "mean":
            sae.b_dec.copy_((init * scale).mean(0))
    steps = cfg.steps_for()
    dm = ActivationDataModule(acts_path, layer, batch_size=cfg.batch_size, steps=steps,
                              val_fraction=cfg.val_fraction, val_tokens=cfg.val_tokens, seed=cfg.seed,
                              pin_memory=not _on_cpu(cfg) and torch.cuda.is_available())
    module = SAETrainModule(sae, cfg, steps=steps, scale=scale,
                            lr=DEFAULT_LR if cfg.lr == "auto" else float(cfg.lr))
    picker = ThreadPicker(thread_candidates()) if not cfg.threads and _on_cpu(cfg) else None
    with private_tempdir("tuiwb-train-") as tmp:
        trainer = _make_trainer(cfg, steps, layer, out, tmp, progress, has_val=cfg.val_fraction > 0,
                                extra_callbacks=[picker] if picker else [])
        module._log_every = max(1, steps // 200) if trainer.loggers else 0
        lr_found = lr_probes = None
        if cfg.lr == "auto":
            lr_found, lr_probes = _auto_lr(sae, acts_path, layer, dm, init, cfg, steps, scale)
            module.lr = lr_found
        t0 = time.perf_counter()
        with _interrupt_as_keyboard_interrupt(trainer):
            trainer.fit(module, datamodule=dm)
        seconds = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return {}
    return _finish(store, module, cfg, out, layer, steps, seconds, lr_found, trainer.world_size,
                   lr_probes=lr_probes, threads=picker.history if picker else cfg.threads)


def _auto_lr(sae: SAE, acts_path, layer: int, dm, init: torch.Tensor, cfg: TrainConfig, steps: int,
             scale: float) -> tuple[float, dict[float, float]]:
    """``lr="auto"``: :func:`tuiwb.sae.lr_search.search_lr` on the first training batches, scored on
    the held-out sample (the init sample when there is no held-out split); prints its choice.

    Runs before Lightning starts any DDP process group, so every rank reads the same batches and
    picks the same LR.
    """
    from tuiwb.sae.data import ActivationStream
    from tuiwb.sae.lr_search import describe, search_lr

    probe_steps = max(2, min(cfg.lr_find_steps, steps))
    val = dm.heldout_sample()
    if len(val) == 0:
        val = init[: cfg.val_tokens]

    def batches():
        return iter(ActivationStream(str(acts_path), layer, cfg.batch_size, probe_steps,
                                     val_fraction=cfg.val_fraction, seed=cfg.seed))

    lr, fvus = search_lr(sae, batches, val, cfg, probe_steps, scale, start=DEFAULT_LR)
    if _is_rank_zero():
        print(f"layer {layer}: {describe(lr, fvus, probe_steps, cfg.batch_size)}", file=sys.stderr, flush=True)
    return lr, fvus


def _on_cpu(cfg: TrainConfig) -> bool:
    return cfg.accelerator == "cpu" or (cfg.accelerator == "auto" and not torch.cuda.is_available())


def _is_rank_zero() -> bool:
    return all(int(os.environ.get(v, "0") or 0) == 0 for v in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _finish(store, module: SAETrainModule, cfg: TrainConfig, out: Path, layer: int, steps: int,
            seconds: float, lr_found: float | None, world_size: int, *, lr_probes=None, threads=None) -> dict:
    from tuiwb.sae.eval import evaluate

    sae = module.sae.copy()
    sae.fold_input_scale(module.scale)
    train_tokens = steps * cfg.batch_size * world_size
    split = "heldout" if cfg.val_fraction > 0 else "all"
    res = evaluate(store, sae, split=split, val_fraction=cfg.val_fraction, max_tokens=cfg.eval_tokens)
    dead_train = float((module.since_fired >= cfg.dead_tokens).float().mean())
    metrics = {**{k: v for k, v in res.to_json().items() if v is not None}, "train_tokens": train_tokens,
               "train_seconds": round(seconds, 2), "tokens_per_s": round(train_tokens / max(seconds, 1e-9), 1),
               "lr": module.lr, "dead_fraction_train": dead_train, "world_size": world_size,
               "threads": threads[-1][1] if isinstance(threads, list) and threads else threads}
    sae.cfg.training = {**_jsonable_cfg(cfg), "lr_used": module.lr, "lr_found": lr_found, "steps": steps,
                        "lr_search": {f"{k:.3g}": v for k, v in (lr_probes or {}).items()} or None,
                        "thread_probes": threads if isinstance(threads, list) else None}
    sae.cfg.metrics = metrics
    save_sae(sae, out)
    return metrics


def _jsonable_cfg(cfg: TrainConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in ("log_dir",)}


def _make_trainer(cfg: TrainConfig, steps: int, layer: int, out: Path, tmp: str, progress: bool,
                  has_val: bool, extra_callbacks=()) -> pl.Trainer:
    from tuiwb.sae.train_progress import TrainProgress

    loggers = []
    log_dir = Path(cfg.log_dir) if cfg.log_dir else out.parent / "logs"
    if cfg.logger == "csv":
        from pytorch_lightning.loggers import CSVLogger

        loggers.append(CSVLogger(str(log_dir), name=f"layer_{layer}", version=""))
    elif cfg.logger == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(log_dir), name=f"layer_{layer}", version=""))
    if cfg.wandb:
        try:
            import wandb  # noqa: F401 — only ever imported when asked for
        except ImportError:
            raise TuiwbError("`wandb` needs the wandb package: pip install wandb") from None
        from pytorch_lightning.loggers import WandbLogger

        loggers.append(WandbLogger(project=cfg.wandb_project, name=f"layer_{layer}", save_dir=str(log_dir)))
    val_every = cfg.val_every or max(1, steps // 8)
    return pl.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy,
        max_steps=steps, max_epochs=1, logger=loggers or False,
        log_every_n_steps=max(1, steps // 200),
        callbacks=[*extra_callbacks,
                   *([TrainProgress(layer, cfg.batch_size * cfg.devices, steps, as_progress(progress))]
                     if progress else [])],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0, use_distributed_sampler=False,
        limit_val_batches=1.0 if has_val else 0, val_check_interval=min(val_every, steps),
        check_val_every_n_epoch=None, gradient_clip_val=cfg.grad_clip or None,
        default_root_dir=tmp, precision="32-true",
    )


@contextlib.contextmanager
def _interrupt_as_keyboard_interrupt(trainer: pl.Trainer):
    """Lightning answers Ctrl-C with ``sys.exit(1)`` and leaves SIGINT ignored; turn that back into a
    ``KeyboardInterrupt`` (nothing is saved, the CLI exits 130) and restore the SIGINT handler."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if main and handler is not None:
            signal.signal(signal.SIGINT, handler)


@contextlib.contextmanager
def _quiet_lightning():
    """Silence Lightning's info logs and advisory warnings (the user sees one progress bar)."""
    names = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"(pytorch_)?lightning.*")
        warnings.filterwarnings("ignore", message=r".*(num_workers|does not have many workers|"
                                r"number of training batches|LR finder|Trying to infer).*")
        try:
            yield
        finally:
            for n, lvl in saved.items():
                logging.getLogger(n).setLevel(lvl)
