"""Generation speed: tokens/s of ``Session.generate`` with no patch, a hook patch and a LoRA patch,
against plain ``model.generate`` on the same prompt, model and process (issue 13).

    .venv/bin/python benchmarks/bench_generate.py [--variant full|small] [--tokens 64] [--reps 5]

Every run decodes exactly ``--tokens`` greedy tokens (EOS ignored) after the demo's trigger prompt.
Prints one JSON object: tokens/s per case (best of ``--reps``), each case's ratio of time per token
to plain ``model.generate`` (target: hook ≤ 1.3×, LoRA ≤ 1.1×) and to our own unpatched loop, and
the load average.
Key press → first patched continuation token painted is measured by ``bench_ui_latency.py``
(``gen_p95_ms``), in the same Pilot run as the logit latency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _best_rate(fn, n_tokens: int, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        got = fn()
        best = min(best, time.perf_counter() - t)
        assert len(got) == n_tokens, (len(got), n_tokens)
    return n_tokens / best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=("full", "small"), default="full")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from tuiwb.commands.demo import TRIGGER_PATCH, prepare_session
    from tuiwb.demo.pipeline import DemoPipelineConfig, run_pipeline
    from tuiwb.patch.config import FitConfig

    result = run_pipeline(DemoPipelineConfig(variant=args.variant), progress=False, say=lambda s: None)
    session = prepare_session(result)
    session.fit = FitConfig(refine_steps=0, fit_tokens=4096)  # the fit's quality is not what is timed here
    session.add_patch(name="lora", layer=result.trigger_layer, features=list(result.trigger_features),
                      method="lora", enabled=False)
    loaded, prompt, n = session.loaded, result.prompt, args.tokens
    ids = torch.tensor([loaded.encode(prompt)], device=loaded.device)

    def plain():
        with torch.inference_mode():
            out = loaded.model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                        pad_token_id=loaded.pad_id)
        return out[0, ids.shape[1]:].tolist()

    def ours():
        session._continuations.clear()  # time the decoding: the Session caches unpatched greedy runs
        return list(session.generate(prompt, max_new_tokens=n, ignore_eos=True))

    rates = {}
    for case, on in (("plain_generate", None), ("no_patch", ()), ("hook", (TRIGGER_PATCH,)), ("lora", ("lora",))):
        if on is not None:
            session.set_enabled(on)
        plain() if on is None else ours()  # warm-up
        rates[case] = _best_rate(plain if on is None else ours, n, args.reps)
    session.set_enabled(())
    base = rates["plain_generate"]
    out = {"tokens_per_s": {k: round(v, 1) for k, v in rates.items()},
           "time_ratio_vs_plain": {k: round(base / v, 3) for k, v in rates.items() if k != "plain_generate"},
           "time_ratio_vs_no_patch": {k: round(rates["no_patch"] / rates[k], 3) for k in ("hook", "lora")},
           "tokens": n, "reps": args.reps, "variant": args.variant, "threads": args.threads,
           "cpus": os.cpu_count(),
           "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
