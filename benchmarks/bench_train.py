"""Benchmark `tuiwb train` against a bare PyTorch TopK loop, EleutherAI sparsify and SAELens, same rows, same run.

    python benchmarks/bench_train.py [--variant full|small] [--layer L] [--tokens 1M] [--k 32]
                                     [--expansion 8] [--batch-size 4096] [--no-contention]
                                     [--no-width] [--write-docs]

Prints one JSON object; ``--write-docs`` replaces the ``## train`` section of docs/benchmarks.md.
Every number is measured in this run, on the same activations (the demo model's middle layer, traced
from its train.txt once and cached under ~/.cache/tuiwb/bench):

- ``tuiwb``: the ``tuiwb train`` CLI in a subprocess, start-up included (tok/s = budget / wall
  seconds of the whole command), default threads (picked by timing) and its held-out metrics.
- ``bare``: the textbook dense TopK loop in plain PyTorch (``[B, d_sae]`` codes, dense decode,
  dense AuxK, Adam, unit-norm decoder), fed the same batches in the same order.
- ``sparsify`` / ``saelens``: their TopK trainers' defaults (sparsify 1.x: SignSGD + schedule-free,
  its LR rule, no AuxK; SAELens 6: ``SAETrainer`` + ``TopKTrainingSAE``) on the same batches;
  skipped with a message when the package is missing (``pip install -e '.[bench]'``).
  All loops see the rows multiplied by the same fixed norm factor (average norm √d); held-out
  metrics come from ``tuiwb.sae.eval.evaluate`` on the store's held-out documents for all of them.
- ``contention``: ``tuiwb train`` again while a busy process started here spins on one core
  (stopped at the end): ratio to the quiet run (target ≥ 0.5).
- ``width``: tok/s of one tuiwb TopK step (sparse autograd) vs the bare dense step at d_in 4096,
  32k latents, on random rows (a few steps, batch ``--width-batch``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def traced_acts(variant: str, layer: int | None) -> tuple[Path, Path, int, float]:
    """(model dir, activation dir, layer, trace seconds — 0 when cached)."""
    from tuiwb.demo.model import cache_dir, demo_model_path
    from tuiwb.model.loading import load_model
    from tuiwb.trace.config import TraceConfig
    from tuiwb.trace.store import ActivationStore
    from tuiwb.trace.tracer import trace

    model = demo_model_path(variant, progress=False)
    n_layers = json.loads((model / "config.json").read_text())["num_hidden_layers"]
    layer = n_layers // 2 if layer is None else layer
    acts = cache_dir() / "bench" / f"acts-{model.name}-L{layer}.parquet"
    try:
        if ActivationStore(acts).complete:
            return model, acts, layer, 0.0
    except Exception:  # noqa: BLE001 — missing or partial: trace it again
        pass
    acts.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    trace(TraceConfig(data=[str(model / "train.txt")], out=str(acts), layers=[layer], seq_len=128,
                      batch_size=32, overwrite=True), progress=False, loaded=load_model(str(model)))
    return model, acts, layer, time.perf_counter() - t0


class Rows:
    """The shared training batches (the store's shuffled order, as ``tuiwb train`` reads them) and
    the norm factor every loop uses."""

    def __init__(self, acts: Path, layer: int, cfg):
        from tuiwb.sae.data import norm_scaling_factor, sample_rows
        from tuiwb.trace.store import ActivationStore

        self.store, self.layer, self.cfg = ActivationStore(acts), layer, cfg
        init = sample_rows(self.store, layer, "train", cfg.init_tokens, val_fraction=cfg.val_fraction, seed=cfg.seed)
        self.scale = norm_scaling_factor(init)
        self.mean = (init * self.scale).mean(0)  # [d]
        self.steps = cfg.steps_for()

    def batches(self):
        import torch

        done, epoch = 0, 0
        while done < self.steps:
            for b in self.store.batches(self.layer, self.cfg.batch_size, split="train",
                                        val_fraction=self.cfg.val_fraction, shuffle=True,
                                        seed=self.cfg.seed + 1_000_003 * epoch, drop_last=True):
                yield torch.as_tensor(b, dtype=torch.float32) * self.scale  # [B, d]
                done += 1
                if done >= self.steps:
                    return
            epoch += 1

    def heldout(self, sae) -> dict:
        """Held-out metrics of an SAE trained on scaled rows (its scale folded back first)."""
        from tuiwb.sae.eval import evaluate

        sae.fold_input_scale(self.scale)
        r = evaluate(self.store, sae, split="heldout", val_fraction=self.cfg.val_fraction,
                     max_tokens=self.cfg.eval_tokens)
        return {"fvu": r.fvu, "l0": r.l0, "dead_fraction": r.dead_fraction}


def tuiwb_sae(rows: Rows, d_sae: int, k: int, state: dict, apply_b_dec: bool = True):
    """A tuiwb ``SAE`` holding another trainer's weights (same names and math), for ``evaluate``."""
    import torch

    from tuiwb.sae.model import SAE, SAEConfig

    s = rows.store
    sae = SAE(SAEConfig(d_in=s.d_model, d_sae=d_sae, architecture="topk", k=k, apply_b_dec_to_input=apply_b_dec,
                        hook_name=s.column(rows.layer), model_config_hash=s.config_hash,
                        model_fingerprint=s.fingerprint, model_name=s.model_id))
    with torch.no_grad():
        for name, value in state.items():
            getattr(sae, name).copy_(value.detach().float())
    return sae


def dense_topk_step(W_enc, b_enc, W_dec, b_dec, x, k, dead, aux_coef=1 / 32):
    """The textbook dense TopK + AuxK loss (the bare loop's and the width test's reference)."""
    import torch

    pre = (x - b_dec) @ W_enc + b_enc  # [B, d_sae]
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    acts = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))  # [B, d_sae]
    err = x - (acts @ W_dec + b_dec)
    total_var = (x - x.mean(0)).pow(2).sum()
    loss = err.pow(2).sum() / total_var
    n_dead = int(dead.sum())
    if n_dead:
        k_aux = min(x.shape[1] // 2, n_dead)
        a_vals, a_idx = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1, sorted=False)
        e_hat = torch.zeros_like(pre).scatter(-1, a_idx, a_vals) @ W_dec
        loss = loss + aux_coef * min(n_dead / (x.shape[1] // 2), 1.0) * (e_hat - err.detach()).pow(2).sum() / total_var
    return loss, idx[vals > 0]


def bare_loop(rows: Rows, cfg) -> dict:
    import torch

    torch.manual_seed(cfg.seed)
    d = rows.store.d_model
    m = cfg.d_sae_for(d)
    W_dec = torch.randn(m, d)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    params = {"W_enc": W_dec.t().clone(), "b_enc": torch.zeros(m), "W_dec": W_dec, "b_dec": rows.mean.clone()}
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(params.values(), lr=float(cfg.lr))
    since = torch.zeros(m, dtype=torch.int64)
    t0 = time.perf_counter()
    for x in rows.batches():
        loss, fired = dense_topk_step(*params.values(), x, cfg.k, since >= cfg.dead_tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            params["W_dec"] /= params["W_dec"].norm(dim=-1, keepdim=True)
        since += x.shape[0]
        since[fired] = 0
    seconds = time.perf_counter() - t0
    return _row(rows, seconds, tuiwb_sae(rows, m, cfg.k, params))


def sparsify_loop(rows: Rows, cfg) -> dict:
    import torch
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    torch.manual_seed(cfg.seed)
    d = rows.store.d_model
    sae = SparseCoder(d, SparseCoderConfig(k=cfg.k, num_latents=cfg.d_sae_for(d)))
    with torch.no_grad():
        sae.b_dec.copy_(rows.mean)  # sparsify sets b_dec to the first batch's mean
    lr = 5e-3 / (sae.num_latents / 2 ** 14) ** 0.5  # sparsify's default for its default optimizer
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": lr}]), momentum=0.95)
    opt.train()
    t0 = time.perf_counter()
    for x in rows.batches():
        out = sae(x)  # auxk_alpha defaults to 0 in sparsify: no dead mask
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sae.set_decoder_norm_to_unit_norm()
    opt.eval()  # schedule-free: evaluate at the averaged weights
    seconds = time.perf_counter() - t0
    state = {"W_enc": sae.encoder.weight.t(), "b_enc": sae.encoder.bias, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    return _row(rows, seconds, tuiwb_sae(rows, sae.num_latents, cfg.k, state))


def saelens_loop(rows: Rows, cfg) -> dict:
    import logging

    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    logging.getLogger("sae_lens").setLevel(logging.ERROR)
    torch.manual_seed(cfg.seed)
    d = rows.store.d_model
    m = cfg.d_sae_for(d)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=m, k=cfg.k))
    steps = rows.steps
    tcfg = SAETrainerConfig(total_training_samples=steps * cfg.batch_size, train_batch_size_samples=cfg.batch_size,
                            lr=float(cfg.lr), lr_warm_up_steps=max(1, round(cfg.warmup_fraction * steps)),
                            lr_decay_steps=round(cfg.decay_fraction * steps), lr_end=0.0)
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=rows.batches())
    t0 = time.perf_counter()
    os.environ.setdefault("TQDM_DISABLE", "1")
    sae = trainer.fit()
    seconds = time.perf_counter() - t0
    state = {n: getattr(sae, n) for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    return _row(rows, seconds, tuiwb_sae(rows, m, cfg.k, state, bool(sae.cfg.apply_b_dec_to_input)))


def _row(rows: Rows, seconds: float, sae) -> dict:
    tokens = rows.steps * rows.cfg.batch_size
    return {"tokens_per_s": round(tokens / seconds), "seconds": round(seconds, 1), **rows.heldout(sae)}


def tuiwb_cli(acts: Path, layer: int, args, out: Path) -> dict:
    """``tuiwb train`` as a user runs it; tok/s over the command's whole wall time."""
    cmd = [sys.executable, "-m", "tuiwb", "train", "--acts", str(acts), "--layer", str(layer), "--out", str(out),
           "--tokens", str(args.tokens), "--k", str(args.k), "--expansion", str(args.expansion),
           "--batch-size", str(args.batch_size), "--json", "--no-progress", "--log", "none", "--overwrite"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"tuiwb train failed: {r.stderr[-2000:]}")
    m = json.loads(r.stdout)[str(layer)]
    return {"tokens_per_s": round(m["train_tokens"] / wall), "seconds": round(wall, 1),
            "train_loop_tokens_per_s": round(m["tokens_per_s"]), "threads": m.get("threads"),
            "fvu": m["fvu"], "l0": m["l0"], "dead_fraction": m["dead_fraction"]}


def width_step(batch: int, d: int = 4096, m: int = 32768, k: int = 32, steps: int = 1) -> dict:
    """tok/s of one training step at width: tuiwb's sparse autograd vs the bare dense formulation."""
    import torch

    from tuiwb.sae.model import SAE, SAEConfig
    from tuiwb.sae.objective import step_loss

    sae = SAE(SAEConfig(d_in=d, d_sae=m, architecture="topk", k=k))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = torch.randn(batch, d)
    dead = torch.zeros(m, dtype=torch.bool)
    dead[: m // 10] = True  # AuxK active, as in a real run

    def sparse():
        out = step_loss(sae, x, dead=dead)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    def dense():
        loss, _ = dense_topk_step(sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, x, k, dead)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    res = {}
    for name, fn in (("tuiwb_sparse", sparse), ("bare_dense", dense)):
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        res[name] = round(batch * steps / (time.perf_counter() - t0))
    return {"d_in": d, "d_sae": m, "k": k, "batch": batch, "threads": torch.get_num_threads(), **res,
            "ratio": round(res["tuiwb_sparse"] / res["bare_dense"], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=("full", "small"), default="full")
    ap.add_argument("--layer", type=int, default=None, help="default: the middle layer")
    ap.add_argument("--tokens", default="1M", help="training budget per run (default 1M)")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--no-contention", action="store_true", help="skip the run beside a busy process")
    ap.add_argument("--no-width", action="store_true", help="skip the d_in 4096 × 32k step timing")
    ap.add_argument("--width-batch", type=int, default=256)
    ap.add_argument("--write-docs", action="store_true", help="write the ## train section of docs/benchmarks.md")
    args = ap.parse_args()

    from tuiwb.sae.config import TrainConfig, token_count

    args.tokens = token_count(args.tokens)
    load = [os.getloadavg()[0]]
    model, acts, layer, trace_s = traced_acts(args.variant, args.layer)
    cfg = TrainConfig(arch="topk", k=args.k, expansion=args.expansion, tokens=args.tokens,
                      batch_size=args.batch_size, logger="none")
    rows = Rows(acts, layer, cfg)
    table, skipped = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        table["tuiwb train"] = tuiwb_cli(acts, layer, args, Path(tmp) / "quiet")
        load.append(os.getloadavg()[0])
        table["bare PyTorch loop"] = bare_loop(rows, cfg)
        for name, module, fn in (("sparsify", "sparsify", sparsify_loop), ("SAELens", "sae_lens", saelens_loop)):
            if importlib.util.find_spec(module) is None:
                skipped[name] = f"{module} is not installed (pip install -e '.[bench]')"
                print(f"skipping {name}: {skipped[name]}", file=sys.stderr)
                continue
            table[name] = fn(rows, cfg)
            load.append(os.getloadavg()[0])
        contention = None
        if not args.no_contention:
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                time.sleep(1.0)
                busy_run = tuiwb_cli(acts, layer, args, Path(tmp) / "busy")
            finally:
                busy.kill()
                busy.wait()
            contention = {"busy": busy_run, "ratio": round(busy_run["tokens_per_s"] / table["tuiwb train"]["tokens_per_s"], 2)}
            load.append(os.getloadavg()[0])
    width = None if args.no_width else width_step(args.width_batch)
    fastest_peer = max((v["tokens_per_s"] for k, v in table.items() if k != "tuiwb train"), default=None)
    result = {
        "model": f"demo-{args.variant}", "layer": layer, "d_model": rows.store.d_model,
        "d_sae": cfg.d_sae_for(rows.store.d_model), "k": args.k, "batch_size": args.batch_size,
        "budget_tokens": args.tokens, "train_rows": int(len(rows.store.row_indices("train"))),
        "trace_seconds": round(trace_s, 1), "table": table, "skipped": skipped, "contention": contention,
        "width": width, "tuiwb_over_fastest_peer": round(table["tuiwb train"]["tokens_per_s"] / fastest_peer, 2)
        if fastest_peer else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "load_average": [round(v, 1) for v in load],
    }
    print(json.dumps(result, indent=1))
    if args.write_docs:
        write_docs(result)
    return 0


def write_docs(r: dict) -> None:
    """Replace (or append) the ``## train`` section of docs/benchmarks.md."""
    base = r["table"]["tuiwb train"]["tokens_per_s"]
    lines = [
        "## train",
        "",
        f"`python benchmarks/bench_train.py --variant {r['model'].split('-')[1]} --tokens {r['budget_tokens']} "
        f"--write-docs` — {r['model']} layer {r['layer']} (d_model {r['d_model']}), TopK k={r['k']}, d_sae "
        f"{r['d_sae']}, batch {r['batch_size']}, {r['budget_tokens']:,} training tokens per run, the same "
        f"{r['train_rows']:,}-row training split in the same order for every loop; {r['machine']}, load average "
        f"{' → '.join(map(str, r['load_average']))} over the run (the box is shared with other jobs; numbers "
        "are from this one run).",
        "",
        "| trainer | tok/s | vs tuiwb | held-out FVU | L0 | held-out dead |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, v in r["table"].items():
        label = "**tuiwb train** (CLI, start-up included)" if name == "tuiwb train" else name
        lines.append(f"| {label} | {v['tokens_per_s']:,} | {v['tokens_per_s'] / base:.2f}× | {v['fvu']:.4f} | "
                     f"{v['l0']:.1f} | {100 * v['dead_fraction']:.1f}% |")
    for name, why in r["skipped"].items():
        lines.append(f"| {name} | skipped: {why} | | | | |")
    t = r["table"]["tuiwb train"]
    lines += ["", f"tuiwb's training loop alone ran at {t['train_loop_tokens_per_s']:,} tok/s with "
                  f"{t['threads']} torch thread(s) (picked by timing); the table's figure includes start-up, "
                  "init, periodic held-out metrics and the final evaluation."]
    if r["contention"]:
        c = r["contention"]
        lines += ["", f"Contention: the same `tuiwb train` beside a busy process this benchmark started (one core "
                      f"spinning, stopped at the end): {c['busy']['tokens_per_s']:,} tok/s, **{c['ratio']:.2f}×** "
                      f"the quiet figure (target ≥ 0.5; threads picked: {c['busy']['threads']})."]
    if r["width"]:
        w = r["width"]
        lines += ["", f"Width: one TopK training step at d_in {w['d_in']}, {w['d_sae']:,} latents, k {w['k']}, batch "
                      f"{w['batch']} ({w['threads']} threads, random rows, AuxK on 10% dead): tuiwb's sparse "
                      f"autograd {w['tuiwb_sparse']:,} tok/s vs the bare dense step {w['bare_dense']:,} tok/s "
                      f"(**{w['ratio']:.2f}×**). No GPU in this session: GPU figures are not measured here."]
    replace_docs_section("## train", "\n".join(lines) + "\n")


def replace_docs_section(heading: str, section: str) -> None:
    """Replace (or append) the section under ``heading`` in docs/benchmarks.md, up to the next ``## ``."""
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    m = re.search(rf"(?m)^{re.escape(heading)}[ \t]*$", text)
    if m is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = re.search(r"(?m)^## ", text[m.end():])
        rest = text[m.end() + nxt.start():] if nxt else ""
        text = text[:m.start()] + section + ("\n" + rest if rest else "")
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
