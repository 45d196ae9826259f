"""Live SAE training: activations stream from the model's forward into one trainer per layer, no disk cache.

``train_live(LiveSource(model=..., data=[...]), layers, out, TrainConfig(...))`` is ``tuiwb train
--model M --data FILE --layer 10,20|all``. One forward pass per batch of windows feeds every layer:

1. documents → BOS-prefixed windows of ``seq_len`` (:mod:`tuiwb.trace.sources` / ``windows``, as
   ``tuiwb trace`` packs them) → ``LoadedModel.run_to`` the deepest layer with a hook on each
   trained block (nothing deeper is computed);
2. a document is held out when the splitmix64 hash of its id falls in the lowest ``val_fraction``
   of the range (a streaming version of the store's split: no document count needed); held-out and
   special-token (BOS) rows never reach the trainers;
3. each layer's rows go into a shuffle buffer of ``buffer_tokens`` rows; once full, half of it is
   served as shuffled batches to that layer's :class:`~tuiwb.sae.layer_trainer.LayerTrainer`;
   the first buffer also gives the norm factor and ``b_dec``'s init (geometric median);
4. after ``tokens`` training tokens, the held-out windows are streamed once more for the final
   metrics (``eval_tokens`` per layer), and each SAE is saved as ``out/layer_N`` (SAELens layout,
   exactly what ``train_saes`` writes).

``devices=N, strategy="ddp"`` launches N processes with Lightning Fabric (NCCL on GPUs, gloo on
CPU); rank r forwards the windows ``i ≡ r (mod N)`` and the trainers all-reduce their gradients,
so every rank steps the same weights; rank 0 writes. When the text runs out before the budget it is
read again from the start (with a warning).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from tuiwb.errors import ParamError, TuiwbError, warn
from tuiwb.progress import as_progress
from tuiwb.sae.config import TrainConfig


@dataclass
class LiveSource:
    """Where live training gets its activations."""

    model: str
    """Checkpoint directory or hub id whose forward feeds the trainers."""
    data: list[str] = field(default_factory=list)
    """Input text files (.txt one document per line, .jsonl, .parquet)."""
    seq_len: int = 128
    """Tokens per window, BOS at position 0 included (as ``tuiwb trace``)."""
    forward_batch: int = 32
    """Windows per forward pass."""
    text_field: str = "text"
    """The JSON field / Parquet column holding the text."""
    buffer_tokens: int = 131_072
    """Rows per layer in the shuffle buffer (half is served per refill)."""
    device: str = "cpu"
    """Where the model's forward runs without DDP (``accelerator`` gpu/auto moves it to cuda; under
    DDP each rank uses its own device)."""


def heldout_mask(doc_ids: np.ndarray, val_fraction: float) -> np.ndarray:
    """True for rows of held-out documents: ``mix64(doc_id) < val_fraction · 2⁶⁴``."""
    from tuiwb.trace.store import _mix64

    if val_fraction <= 0:
        return np.zeros(doc_ids.shape, bool)
    return _mix64(doc_ids) < np.uint64(min(val_fraction, 1.0) * float(2 ** 64 - 1))


class _Stream:
    """Windows → per-layer activation rows (train and held-out), for this rank's share of windows."""

    def __init__(self, src: LiveSource, loaded, layers: list[int], val_fraction: float, rank: int, world: int):
        from tuiwb.trace.sources import open_sources

        self.src, self.loaded, self.layers = src, loaded, layers
        self.val_fraction, self.rank, self.world = val_fraction, rank, world
        self.sources = open_sources(src.data, src.text_field)
        tok = loaded.tokenizer
        self.bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.special = np.asarray(sorted(int(i) for i in getattr(tok, "all_special_ids", []) if i is not None))
        self.epochs = 0

    def _windows(self):
        from tuiwb.trace.sources import iter_documents
        from tuiwb.trace.windows import pack_windows

        tok = self.loaded.tokenizer

        def tokenize(texts):
            return tok(texts, add_special_tokens=False, verbose=False)["input_ids"]

        for w in pack_windows(iter_documents(self.sources, batch=256), tokenize, self.src.seq_len, self.bos):
            if w.index % self.world == self.rank:
                yield w

    def forward_batches(self, cycle: bool):
        """``(acts {layer: [rows, d]}, heldout [rows] bool)`` per forward, special tokens dropped."""
        while True:
            got = False
            batch = []
            for w in self._windows():
                batch.append(w)
                if len(batch) == self.src.forward_batch:
                    got = True
                    yield self._forward(batch)
                    batch = []
            if batch:
                got = True
                yield self._forward(batch)
            if not got:
                raise TuiwbError("no full window of `seq_len` tokens in `data`: give more text or a smaller `seq_len`")
            if not cycle:
                return
            self.epochs += 1

    def _forward(self, batch):
        ids = torch.from_numpy(np.stack([w.tokens for w in batch])).long()  # [b, seq_len]
        docs = np.stack([w.doc_ids for w in batch]).reshape(-1)  # [b·seq_len]
        keep = ~np.isin(ids.numpy().reshape(-1), self.special) if len(self.special) else np.ones(docs.shape, bool)
        captured = {}

        def grab(layer):
            def hook(mod, inputs, output):
                from tuiwb.model.hooks import hidden

                captured[layer] = hidden(output).detach()  # [b, seq_len, d]
            return hook

        with torch.inference_mode():
            self.loaded.run_to(ids.to(self.loaded.device), max(self.layers),
                               hooks=[(L, grab(L)) for L in self.layers])
        keep_t = torch.from_numpy(keep)
        acts = {L: captured[L].reshape(-1, captured[L].shape[-1])[keep_t.to(captured[L].device)].float().clone()
                for L in self.layers}  # each [rows, d]
        return acts, heldout_mask(docs[keep], self.val_fraction)


class _Shuffler:
    """A shuffle buffer of rows for one layer; ``batches()`` serves full batches once half-full or more."""

    def __init__(self, capacity: int, batch_size: int, seed: int):
        self.capacity, self.batch_size = max(capacity, 2 * batch_size), batch_size
        self.parts: list[torch.Tensor] = []
        self.n = 0
        self.gen = torch.Generator().manual_seed(seed)

    def add(self, rows: torch.Tensor) -> None:
        if len(rows):
            self.parts.append(rows)
            self.n += len(rows)

    @property
    def full(self) -> bool:
        return self.n >= self.capacity

    def peek(self) -> torch.Tensor:
        return torch.cat(self.parts) if self.parts else torch.empty(0)

    def drain(self) -> list[torch.Tensor]:
        """Shuffle; serve half the buffer as batches; keep the rest mixed in with what comes next."""
        buf = torch.cat(self.parts)  # [n, d]
        buf = buf[torch.randperm(len(buf), generator=self.gen).to(buf.device)]
        n_out = (len(buf) // 2) // self.batch_size * self.batch_size
        out, rest = buf[:n_out], buf[n_out:]
        self.parts, self.n = [rest], len(rest)
        return list(out.split(self.batch_size))


def train_live(src: LiveSource, layers, out_dir, cfg: TrainConfig | None = None, progress: bool = True,
               overwrite: bool = False, loaded=None) -> dict[int, dict]:
    """Train one SAE per layer from the model's forward; metrics per layer (rank 0; others ``{}``)."""
    from tuiwb.atomic import check_writable
    from tuiwb.sae.train import _check_replace

    cfg = cfg or TrainConfig()
    if cfg.lr == "auto":
        raise ParamError("lr", "auto needs recorded activations (`acts`); with `model` give a number, e.g. 4e-3")
    if not src.data:
        raise TuiwbError("live training needs `data`: text files whose forward passes feed the trainers")
    out_dir = check_writable(Path(out_dir).expanduser(), "`out`")
    if out_dir.exists() and not out_dir.is_dir():
        raise TuiwbError(f"`out` {out_dir} is a file: give a directory (each layer goes to OUT/layer_N)")
    fabric = None
    if cfg.devices > 1 or cfg.strategy != "auto":
        from lightning_fabric import Fabric

        fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy)
        fabric.launch()
    rank, world = (fabric.global_rank, fabric.world_size) if fabric else (0, 1)
    if loaded is None:
        from tuiwb.model.loading import load_model

        gpu = cfg.accelerator == "gpu" or (cfg.accelerator == "auto" and torch.cuda.is_available())
        device = str(fabric.device) if fabric else ("cuda" if gpu and src.device == "cpu" else src.device)
        loaded = load_model(src.model, device=device)
    todo = _resolve(layers, loaded.n_layers)
    cfg.d_sae_for(loaded.d_model)
    for layer in todo:
        _check_replace(out_dir / f"layer_{layer}", overwrite)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    job = _LiveJob(src, loaded, todo, cfg, rank, world)
    return job.run(out_dir, progress and rank == 0)


def _resolve(layers, n_layers: int) -> list[int]:
    from tuiwb.trace.tracer import resolve_layers

    if isinstance(layers, (int, str)):
        layers = [layers]
    parsed = []
    for x in layers:
        if isinstance(x, str) and x.strip().lower() == "all":
            parsed.append("all")
            continue
        try:
            parsed.append(int(x))
        except (TypeError, ValueError):
            raise TuiwbError(f"`layer` {x!r} is not a layer index: give an integer or 'all'") from None
    if not parsed:
        raise TuiwbError("no layers to train: pass `layer` (N, several, or all)")
    return resolve_layers(parsed, n_layers)


class _LiveJob:
    def __init__(self, src: LiveSource, loaded, layers: list[int], cfg: TrainConfig, rank: int, world: int):
        self.src, self.loaded, self.layers, self.cfg = src, loaded, layers, cfg
        self.rank, self.world = rank, world
        self.stream = _Stream(src, loaded, layers, cfg.val_fraction, rank, world)
        self.steps = cfg.steps_for()

    def run(self, out_dir: Path, progress: bool) -> dict[int, dict]:
        from tuiwb.sae.layer_trainer import LayerTrainer

        cfg = self.cfg
        shufflers = {L: _Shuffler(self.src.buffer_tokens, cfg.batch_size, cfg.seed + L) for L in self.layers}
        trainers: dict[int, LayerTrainer] = {}
        bar = as_progress(progress).task("train (live)", self.steps * cfg.batch_size * self.world, unit="tok")
        t0 = time.perf_counter()
        forwards = self.stream.forward_batches(cycle=True)
        epochs = 0
        with bar:
            while not trainers or not all(t.done for t in trainers.values()):
                acts, held = next(forwards)
                train_rows = torch.from_numpy(~held)
                for L, rows in acts.items():
                    shufflers[L].add(rows[train_rows.to(rows.device)])
                wrapped = self.stream.epochs != epochs  # the text ran out: serve what the buffer holds
                epochs = self.stream.epochs
                if not wrapped and not all(s.full for s in shufflers.values()):
                    continue
                if not trainers:
                    trainers = {L: self._new_trainer(L, shufflers[L].peek()) for L in self.layers}
                for L, trainer in trainers.items():
                    batches = shufflers[L].drain()
                    n = min(len(batches), trainer.steps - trainer.step_count)
                    n = self._min_over_ranks(n)  # every rank steps together (the gradients are all-reduced)
                    shufflers[L].add(torch.cat(batches[n:]) if len(batches) > n else torch.empty(0))
                    for batch in batches[:n]:
                        trainer.step(batch)
                done = min(t.step_count for t in trainers.values())
                bar.update(done * cfg.batch_size * self.world,
                           info=f"{done * cfg.batch_size * self.world / max(time.perf_counter() - t0, 1e-9):,.0f} tok/s")
        seconds = time.perf_counter() - t0
        if self.stream.epochs:
            warn(f"the text of `data` was read {self.stream.epochs + 1} times to reach `tokens` {cfg.tokens:,}: "
                 "the SAEs saw the same text more than once; give more text or lower `tokens`")
        metrics = self._evaluate(trainers)
        if self.rank != 0:
            return {}
        return {L: self._save(out_dir / f"layer_{L}", trainers[L], metrics[L], seconds) for L in self.layers}

    def _new_trainer(self, layer: int, init: torch.Tensor):
        from tuiwb.sae.data import geometric_median, norm_scaling_factor
        from tuiwb.sae.layer_trainer import LayerTrainer
        from tuiwb.sae.model import SAE, SAEConfig
        from tuiwb.trace.shards import column_name

        init = init[: self.cfg.init_tokens].float().cpu()  # [n, d]
        if self.world > 1:  # every rank must start from the same factor and b_dec: rank 0's
            init = init[: self._min_over_ranks(len(init))].contiguous().to(self.loaded.device)
            torch.distributed.broadcast(init, 0)
            init = init.cpu()
        scale = norm_scaling_factor(init)
        torch.manual_seed(self.cfg.seed)
        d = self.loaded.d_model
        sae = SAE(SAEConfig(d_in=d, d_sae=self.cfg.d_sae_for(d), architecture=self.cfg.arch,
                            k=self.cfg.k if self.cfg.arch == "topk" else None, hook_name=column_name(layer),
                            layer=layer, model_name=self.loaded.model_id, model_config_hash=self.loaded.config_hash,
                            model_fingerprint=self.loaded.fingerprint))
        with torch.no_grad():
            if self.cfg.b_dec_init == "geometric_median":
                sae.b_dec.copy_(geometric_median(init[:16384] * scale))
            elif self.cfg.b_dec_init == "mean":
                sae.b_dec.copy_((init * scale).mean(0))
        sae = sae.to(self.loaded.device)
        return LayerTrainer(sae, self.cfg, steps=self.steps, lr=float(self.cfg.lr), scale=scale)

    def _min_over_ranks(self, n: int) -> int:
        if self.world == 1:
            return n
        t = torch.tensor([n], device=self.loaded.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return int(t)

    def _evaluate(self, trainers) -> dict[int, dict]:
        """Final held-out metrics: stream the held-out rows once, up to ``eval_tokens`` per layer."""
        from tuiwb.sae.metrics import ReconstructionSums

        sums = {L: ReconstructionSums(t.sae.d_in, t.sae.d_sae, t.sae.W_enc.device) for L, t in trainers.items()}
        limit = (self.cfg.eval_tokens or float("inf")) / self.world
        seen = 0
        if self.cfg.val_fraction > 0:
            for acts, held in self.stream.forward_batches(cycle=False):
                h = torch.from_numpy(held)
                for L, rows in acts.items():
                    x = rows[h.to(rows.device)]
                    if len(x):
                        sums[L].update(trainers[L].sae, x * trainers[L].scale)
                seen += int(held.sum())
                if seen >= limit:
                    break
        if self.world > 1:
            for s in sums.values():
                s.reduce(lambda t: (torch.distributed.all_reduce(t), t)[1])
        return {L: s.result() for L, s in sums.items()}

    def _save(self, out: Path, trainer, res: dict, seconds: float) -> dict:
        from tuiwb.sae.io import save_sae
        from tuiwb.sae.train import _jsonable_cfg

        cfg = self.cfg
        sae = trainer.sae.copy().cpu()
        sae.fold_input_scale(trainer.scale)
        train_tokens = self.steps * cfg.batch_size * self.world
        metrics = {**{k: v for k, v in res.items() if v is not None}, "train_tokens": train_tokens,
                   "train_seconds": round(seconds, 2), "tokens_per_s": round(train_tokens / max(seconds, 1e-9), 1),
                   "lr": trainer.lr, "dead_fraction_train": float((trainer.since_fired >= cfg.dead_tokens).float().mean()),
                   "world_size": self.world, "live": True}
        sae.cfg.training = {**_jsonable_cfg(cfg), "lr_used": trainer.lr, "lr_found": None, "steps": self.steps,
                            "live": {k: v for k, v in asdict(self.src).items() if k != "device"}}
        sae.cfg.metrics = metrics
        save_sae(sae, out)
        return metrics
