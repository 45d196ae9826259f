"""``tuiwb env``: torch/CUDA/bitsandbytes versions, GPUs with free memory, which quant modes work."""

from __future__ import annotations

import argparse

HELP = "show torch/CUDA/bitsandbytes versions, GPUs with free memory, and which --quant modes work"
"""One line in `tuiwb --help` (listed without building this command's parser)."""


DESCRIPTION = ("What this machine offers: library versions, the device --device auto picks, each GPU's free "
               "memory, and whether --quant 8bit / 4bit work (each is tried on a tiny layer).")


def add_parser(sub, parents) -> None:
    p = sub.add_parser("env", parents=parents, help=HELP, description=DESCRIPTION)
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from tuiwb.model.environment import report

    r = report()
    if args.json:
        print(json.dumps(r))
        return 0
    v = r["versions"]
    print(f"python {r['python']} on {r['platform']}")
    print("  ".join(f"{k} {v[k] or '-'}" for k in v))
    print(f"CUDA {r['cuda'] or '-'}  cuDNN {r['cudnn'] or '-'}  MPS {'yes' if r['mps'] else 'no'}")
    if r["gpus"]:
        for g in r["gpus"]:
            print(f"GPU {g['index']}: {g['name']}, {g['free_gib']:.1f} of {g['total_gib']:.1f} GiB free"
                  f"{'' if g['bf16'] else ', no bfloat16'}")
    else:
        print("no CUDA GPU")
    print(f"--device auto → {r['auto_device']}; 4-bit compute dtype {r['compute_dtype_4bit']}")
    for mode, state in r["quant"].items():
        print(f"--quant {mode}: {'works' if state == 'ok' else 'does not work: ' + state}")
    return 0
