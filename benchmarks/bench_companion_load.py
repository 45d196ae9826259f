"""Load on the browser companion: N concurrent WebSocket clients toggling for a while, on loopback.

Starts ``tuiwb demo --companion --no-ui`` in a child process (the server, alone: its RSS is read from
/proc), then runs N clients in this process. Each client loops: send a toggle of the demo's trigger
patch (random on/off), wait until a ``logits`` broadcast ``covers`` that seq, repeat, until the time is
up. Every client also sees everybody else's answers. Checks what issue 11 requires: zero errors, every
client ends on the same final state (the same patch states and bars as ``GET /api/state``), and the
server's RSS stays flat (end ≤ 1.2× start). The request → covering-answer latency is reported too; the
baseline in the same run is one client alone (no contention).

    .venv/bin/python benchmarks/bench_companion_load.py [--clients 50] [--seconds 30] [--variant full|small]

Prints one JSON object: {"ok", "errors", "clients", "seconds", "requests", "answers", "same_final_state",
"rss_start_mb", "rss_end_mb", "rss_peak_mb", "rss_ratio", "p50_ms", "p95_ms", "alone_p50_ms", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PATCH = "trigger"
ANSWER_TIMEOUT_S = 20.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_server(variant: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "tuiwb", "demo", "--variant", variant, "--companion", "--no-ui",
                             "--port", "0", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env, cwd=ROOT)
    for line in proc.stdout:
        m = re.search(r"(http://\S+\?token=\S+)", line)
        if m:
            return proc, m.group(1)
    raise RuntimeError(f"the server did not start (exit {proc.wait()})")


class Client:
    def __init__(self, ws, me: str):
        self.ws, self.me = ws, me
        self.last: dict | None = None
        self.covered = -1
        self.errors: list[str] = []
        self.latencies: list[float] = []
        self.changed = asyncio.Event()

    async def reader(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg["type"] == "logits":
                self.last = msg
                self.covered = max(self.covered, msg.get("covers", {}).get(self.me, -1))
            elif msg["type"] == "error":
                self.errors.append(msg["detail"])
            self.changed.set()

    async def toggle_until(self, seq: int, on: bool) -> None:
        t = time.perf_counter()
        await self.ws.send(json.dumps({"type": "toggle", "seq": seq, "patch": PATCH, "on": on}))
        deadline = t + ANSWER_TIMEOUT_S
        while self.covered < seq:
            self.changed.clear()
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"no answer to seq {seq} in {ANSWER_TIMEOUT_S:.0f} s")
            await asyncio.wait_for(self.changed.wait(), left)
        self.latencies.append((time.perf_counter() - t) * 1e3)


async def connect(ws_url: str, origin: str):
    import websockets

    ws = await websockets.connect(ws_url, origin=origin, max_size=1 << 22, open_timeout=60)
    hello = json.loads(await ws.recv())
    c = Client(ws, hello["client"])
    c.task = asyncio.create_task(c.reader())
    return c


async def run(url: str, pid: int, n_clients: int, seconds: float, rng: random.Random) -> dict:
    base, token = url.split("/?token=")
    ws_url = base.replace("http://", "ws://") + f"/ws?token={token}"
    # Baseline, same run: one client alone.
    alone = await connect(ws_url, base)
    for seq in range(1, 41):
        await alone.toggle_until(seq, seq % 2 == 1)
    await alone.ws.close()
    rss_start = rss_mb(pid)
    clients = await asyncio.gather(*(connect(ws_url, base) for _ in range(n_clients)))
    peak = [rss_start]
    stop_at = time.perf_counter() + seconds
    failures: list[str] = []

    async def loop(c: Client) -> int:
        seq = 0
        try:
            while time.perf_counter() < stop_at:
                seq += 1
                await c.toggle_until(seq, rng.random() < 0.5)
        except Exception as e:  # noqa: BLE001 — counted, reported
            failures.append(f"{type(e).__name__}: {e}")
        return seq

    async def sample() -> None:
        while time.perf_counter() < stop_at:
            peak.append(rss_mb(pid))
            await asyncio.sleep(0.5)

    t0 = time.perf_counter()
    sampler = asyncio.create_task(sample())
    sent = await asyncio.gather(*(loop(c) for c in clients))
    wall = time.perf_counter() - t0
    await sampler
    await asyncio.sleep(1.0)  # the last broadcast reaches everybody
    rss_end = rss_mb(pid)
    state = await asyncio.to_thread(_get_json, f"{base}/api/state", token)
    want = [(p["name"], p["on"]) for p in state["patches"]]
    finals = {json.dumps([[(p["name"], p["on"]) for p in c.last["patches"]], [t["id"] for t in c.last["top"]],
                          round(c.last["kl"], 9)]) for c in clients if c.last is not None}
    same = len(finals) == 1 and all(c.last is not None for c in clients) and \
        json.loads(next(iter(finals)))[0] == [list(x) for x in want]
    errors = failures + [e for c in clients for e in c.errors]
    lat = [x for c in clients for x in c.latencies]
    answers = len({(m["seq"], m["origin"]) for m in [c.last for c in clients] if m})  # (informational)
    for c in clients:
        await c.ws.close()
    return {
        "ok": not errors and same and rss_end <= 1.2 * rss_start,
        "errors": len(errors), "error_examples": errors[:3], "clients": n_clients, "seconds": round(wall, 1),
        "requests": int(sum(sent)), "requests_per_s": round(sum(sent) / wall, 1),
        "same_final_state": same, "final_patches": want, "distinct_last_answers": answers,
        "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
        "alone_p50_ms": round(float(np.percentile(alone.latencies, 50)), 1),
        "alone_p95_ms": round(float(np.percentile(alone.latencies, 95)), 1),
        "rss_start_mb": round(rss_start, 1), "rss_end_mb": round(rss_end, 1), "rss_peak_mb": round(max(peak), 1),
        "rss_ratio": round(rss_end / rss_start, 3),
    }


def _get_json(url: str, token: str) -> dict:
    req = urllib.request.Request(url, headers={"X-Tuiwb-Token": token})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--variant", choices=("full", "small"), default="full")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    load_start = os.getloadavg()[0]
    proc, url = start_server(args.variant)
    try:
        out = asyncio.run(run(url, proc.pid, args.clients, args.seconds, random.Random(args.seed)))
    finally:
        proc.terminate()
        proc.wait(10)
    out.update(variant=args.variant, cpus=os.cpu_count(), load_avg_1m_start=round(load_start, 2),
               load_avg_1m_end=round(os.getloadavg()[0], 2))
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
