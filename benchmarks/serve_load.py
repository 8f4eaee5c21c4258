"""Load test of ``unio serve``: 200 requests from 16 concurrent clients against the same requests
sent one by one, on loopback, with every answer checked.

    python benchmarks/serve_load.py --threads 1                  # shapes-demo, ~3 minutes on 2 cores
    python benchmarks/serve_load.py --n 60 --clients 8 --rounds 1 --out /tmp/serve.json

Starts ``unio serve`` in a subprocess on 127.0.0.1 (a free port) and sends --n requests over a mix
of tasks (caption, vqa, detect, ground, depth) on shapes-world images (``ShapesWorld(seed)``), half
as multipart uploads and half as JSON with base64, plus a few bad ones that must each get their
4xx while the rest succeed: a broken image (422), an unknown task (404), a bad option value (422)
and an oversized body (413; the server runs with --max-upload-mb 1). The same request list is sent
one by one by a single client to the server as started by default (sequential), then by --clients
concurrent clients (each takes the next request when its previous one is answered) to it (step
batching: requests join the decoding batch at the next step: "concurrent"), to a second server
started with --batching call (batches of one task and options: "concurrent, per call") and to a
third with --batching call --mix-tasks (greedy requests of any tasks share a model call:
"concurrent, call mixed"; --arms picks among the three), --rounds times, alternating, so that the
noise of a shared machine falls on every arm; the speedup is the median of the rounds' ratios. Reports
throughput, p50/p99 latency, the time the server's worker spent in the model, the mean batch size
per task (from /metrics), the server's RSS after a warm-up and after all rounds, and compares every
answer with a direct ``pipe.run`` of the same input in this process (texts and boxes exactly;
detect scores and depth maps within 1e-4, as batching pads the inputs): zero lost, zero mixed up.
Bounded: every request has a timeout, the whole run a --time-limit, and the server is stopped at
the end whatever happens. Prints a table and writes JSON (default
benchmarks/results/serve_load.json). Issue target: >= 3x the sequential throughput.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import torch

import unio
from unio.data.shapes import ShapesWorld

TARGET = 3.0
CALL = "concurrent, per call"
MIXED = "concurrent, call mixed"
ARMS = {  # phase name -> (server kind, its extra flags): every server answers the same request list
    "concurrent": ("step", []),
    CALL: ("call", ["--batching", "call"]),
    MIXED: ("call_mixed", ["--batching", "call", "--mix-tasks"]),
}
TASKS = ("caption", "vqa", "detect", "ground", "depth")
BAD = {  # kind -> expected status
    "broken_image": 422, "unknown_task": 404, "bad_option": 422, "oversized": 413,
}


def build_requests(n: int, seed: int, bad_each: int, tasks=TASKS) -> list[dict]:
    """The request list: good ones over ``tasks`` (seeded), bad ones spread through it."""
    rng = np.random.default_rng(seed)
    world = ShapesWorld(seed=seed)
    n_bad = bad_each * len(BAD)
    reqs = []
    for i in range(n - n_bad):
        sample = world[i]
        task = tasks[int(rng.integers(len(tasks)))]
        inputs = {}
        if task == "vqa":
            inputs["question"] = sample["qa"][int(rng.integers(len(sample["qa"])))][0]
        elif task == "ground":
            inputs["expression"] = sample["refexps"][0][0] if sample["refexps"] else "the red circle"
        reqs.append({"id": i, "task": task, "image": sample["image"], "inputs": inputs, "bad": None,
                     "expect": 200, "json": i % 2 == 1})
    slots = np.linspace(5, len(reqs) + n_bad - 5, n_bad).astype(int)
    for k, (slot, kind) in enumerate(zip(slots, [kind for kind in BAD for _ in range(bad_each)])):
        base = reqs[k % len(reqs)]
        bad = {**base, "id": f"bad{k}", "bad": kind, "expect": BAD[kind], "inputs": dict(base["inputs"])}
        if kind == "unknown_task":
            bad["task"] = "count_sheep"
        if kind == "bad_option":
            bad.update(task="detect", inputs={})
        reqs.insert(int(slot), bad)
    return reqs


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def encode(req: dict) -> dict:
    """httpx keyword arguments of one request."""
    data = png(req["image"])
    options = {}
    if req["bad"] == "broken_image":
        data = data[: len(data) // 3]                 # a truncated PNG
    elif req["bad"] == "bad_option":
        options = {"threshold": "abc"}
    elif req["bad"] == "oversized":
        data = data + os.urandom(2 * 2**20)           # 2 MiB after the PNG; the server takes 1 MiB
    if req["json"] and req["bad"] != "oversized":
        return {"json": {"image": base64.b64encode(data).decode(), **req["inputs"], "options": options}}
    return {"files": {"image": (f"{req['id']}.png", data)},
            "data": {**req["inputs"], **({"options": json.dumps(options)} if options else {})}}


def references(pipe, reqs: list[dict]) -> tuple[dict, float]:
    """Direct pipe.run answers of the good requests (one at a time) and how long they took."""
    out, t0 = {}, time.perf_counter()
    for r in reqs:
        if r["bad"] is None:
            out[r["id"]] = pipe.run(r["task"], r["image"], **r["inputs"])
    return out, time.perf_counter() - t0


def matches(task: str, got: dict, want) -> bool:
    if task in ("caption", "vqa"):
        return got.get("text") == want
    if task == "ground":
        return got.get("box") == [float(v) for v in want.to_list()]
    if task == "detect":
        return (got.get("labels") == [d.label for d in want]
                and np.allclose(got.get("boxes"), [[round(float(v), 2) for v in d.box] for d in want], atol=0.011)
                and np.allclose(got.get("scores"), [d.score for d in want], atol=1e-4))
    if task == "depth":
        arr = np.load(io.BytesIO(base64.b64decode(got["depth_npy"])))
        return arr.shape == want.shape and float(np.abs(arr - want).max()) < 1e-4
    raise ValueError(task)


async def send_all(url: str, reqs: list[dict], clients: int, timeout: float) -> tuple[list, float]:
    """Every request, by ``clients`` concurrent clients; (per request: status, body, latency), wall time."""
    results: list = [None] * len(reqs)
    bodies = [encode(r) for r in reqs]
    nxt = iter(range(len(reqs)))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(client):
        for i in nxt:
            t0 = time.perf_counter()
            try:
                r = await client.post(f"/v1/{reqs[i]['task']}", **bodies[i])
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
                results[i] = (r.status_code, body, time.perf_counter() - t0)
            except httpx.HTTPError as exc:
                results[i] = (None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)

    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(clients)])
        return results, time.perf_counter() - t0


def scrape(url: str) -> tuple[dict[str, tuple[float, float]], float]:
    """{task: (sum, count)} of the server's unio_batch_size histogram, and its model busy seconds."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out: dict = {}
    for kind, task, value in re.findall(r'unio_batch_size_(sum|count)\{task="([^"]+)"\} (\S+)', text):
        s, c = out.get(task, (0.0, 0.0))
        out[task] = (s + float(value), c) if kind == "sum" else (s, c + float(value))
    busy = float(re.search(r"^unio_model_busy_seconds_total (\S+)$", text, re.M).group(1))
    return out, busy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(phase: str, reqs: list[dict], results: list, refs: dict) -> dict:
    ok = lost = wrong = mixed = bad_ok = 0
    for req, (status, body, _) in zip(reqs, results):
        if status is None:
            lost += 1
        elif req["bad"] is not None:
            bad_ok += int(status == req["expect"] and isinstance(body, dict) and set(body) == {"error"})
        elif status != 200:
            lost += 1
        elif matches(req["task"], body, refs[req["id"]]):
            ok += 1
        else:
            wrong += 1
            # a mix-up: the answer is another request's (same task)
            mixed += any(o["task"] == req["task"] and o["id"] != req["id"] and o["bad"] is None
                         and matches(o["task"], body, refs[o["id"]]) for o in reqs)
    n_bad = sum(r["bad"] is not None for r in reqs)
    return {"phase": phase, "good_ok": ok, "good": len(refs), "lost": lost, "differs": wrong, "mixed_up": mixed,
            "bad_answered_right": bad_ok, "bad": n_bad}


def phase_row(name: str, results: list, wall: float, clients: int) -> dict:
    lat = np.array([r[2] for r in results]) * 1000
    return {"phase": name, "clients": clients, "requests": len(results), "wall_s": wall,
            "throughput_rps": len(results) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}


def start_server(args, extra: list[str], deadline: float):
    """``unio serve`` on a free loopback port, ready: (url, psutil.Process with the Popen as .popen)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "unio", "serve", "--model", args.model, "--port", str(port), "--threads",
           str(args.threads), "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
           "--max-upload-mb", "1", "--timeout", str(args.timeout), "--log-level", "warning", *extra]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={k: v for k, v in os.environ.items() if k != "UNIO_SERVE_TOKEN"})
    proc = psutil.Process(server.pid)
    proc.popen = server
    while True:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read()}")
        if time.monotonic() > deadline:
            stop_server(proc)
            raise SystemExit("the server did not come up in time")
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return url, proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def stop_server(proc) -> None:
    server = proc.popen
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="shapes-demo")
    ap.add_argument("--n", type=int, default=200, help="requests per phase (bad ones included)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server (and of the references); "
                    "on 2 cores 1 is fastest: the other core serves HTTP")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--bad-each", type=int, default=2, help="bad requests of each kind in the mix")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, help="the mix of good requests")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS),
                    help="concurrent arms (concurrent: the default server, step batching; always run)")
    ap.add_argument("--rounds", type=int, default=3, help="sequential + concurrent phases, alternating")
    ap.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    ap.add_argument("--time-limit", type=float, default=900.0, help="the whole run, seconds")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "serve_load.json"))
    args = ap.parse_args(argv)
    args.arms = ["concurrent"] + [a for a in args.arms if a != "concurrent"]
    deadline = time.monotonic() + args.time_limit

    torch.set_num_threads(args.threads)
    reqs = build_requests(args.n, args.seed, args.bad_each, args.tasks)
    pipe = unio.load(args.model)
    for task in args.tasks:                            # warm-up: each task's first call is slow
        first = next(r for r in reqs if r["task"] == task and r["bad"] is None)
        pipe.run(task, first["image"], **first["inputs"])
    refs, direct_s = references(pipe, reqs)
    print(f"direct pipe.run of the {len(refs)} good requests, one by one: {direct_s:.1f} s", file=sys.stderr)
    del pipe

    servers = {}
    try:
        for name in ["concurrent"] + [a for a in args.arms if a != "concurrent"]:
            kind, extra = ARMS[name]
            servers[kind] = start_server(args, extra, deadline)
        url, proc = servers["step"]
        warm = [r for r in reqs if r["bad"] is None][:40]
        for u, _ in servers.values():
            asyncio.run(send_all(u, warm, 4, args.timeout))   # warm-up, not measured
        rss_before = proc.memory_info().rss / 2**20
        rows, checks, batches = [], [], {}
        phases = [("sequential", 1, "step")] + [(a, args.clients, ARMS[a][0]) for a in ARMS if a in args.arms]
        for rnd in range(1, args.rounds + 1):                 # the phases alternate: noise hits every arm
            for name, clients, kind in phases:
                if time.monotonic() > deadline:
                    raise SystemExit(f"out of time (--time-limit {args.time_limit:g}) in round {rnd}")
                u = servers[kind][0]
                before, busy0 = scrape(u)
                results, wall = asyncio.run(send_all(u, reqs, clients, args.timeout))
                after, busy1 = scrape(u)
                rows.append({**phase_row(name, results, wall, clients), "round": rnd, "model_busy_s": busy1 - busy0})
                checks.append({**check(name, reqs, results, refs), "round": rnd})
                if clients > 1:
                    got = batches.setdefault(name, {})
                    for t in after:
                        s0, c0 = before.get(t, (0.0, 0.0))
                        s1, c1 = got.get(t, (0.0, 0.0))
                        got[t] = (s1 + after[t][0] - s0, c1 + after[t][1] - c0)
        rss_after = proc.memory_info().rss / 2**20
    finally:
        for _, p in servers.values():
            stop_server(p)

    good = len(refs)
    direct_rps = good / direct_s
    mean_batch = {name: {t: s / max(1.0, c) for t, (s, c) in got.items() if t in args.tasks} for name, got in batches.items()}
    seq = [r for r in rows if r["phase"] == "sequential"]
    arms = [a for a in ARMS if a in args.arms]
    ratio = {name: [c["throughput_rps"] / q["throughput_rps"] for q, c in zip(seq, [r for r in rows if r["phase"] == name])]
             for name in arms}
    speedups = ratio["concurrent"]
    speedup = float(np.median(speedups))
    best = {name: max(r["throughput_rps"] for r in rows if r["phase"] == name) for name in ["sequential"] + arms}

    print(f"\nunio serve load test: {args.model}, {args.n} requests ({good} good over {', '.join(args.tasks)}; "
          f"{args.n - good} bad), server --threads {args.threads} --max-batch {args.max_batch} "
          f"--max-wait-ms {args.max_wait_ms:g}, {os.cpu_count()} CPUs, {args.rounds} rounds")
    print(f"{'round':<6}{'phase':<23}{'clients':>8}{'wall s':>8}{'model s':>9}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'good ok':>10}{'lost':>6}{'mixed':>7}{'bad 4xx':>9}")
    for row, chk in zip(rows, checks):
        print(f"{row['round']:<6}{row['phase']:<23}{row['clients']:>8}{row['wall_s']:>8.1f}{row['model_busy_s']:>9.1f}"
              f"{row['throughput_rps']:>7.1f}{row['p50_ms']:>8.0f}{row['p99_ms']:>8.0f}"
              f"{chk['good_ok']:>6}/{chk['good']:<3}{chk['lost']:>6}{chk['mixed_up']:>7}"
              f"{chk['bad_answered_right']:>6}/{chk['bad']}")
    for name in arms:
        print(f"throughput, {name} / sequential: {float(np.median(ratio[name])):.2f}x (median of rounds: "
              f"{', '.join(f'{v:.2f}' for v in ratio[name])}){f'; target {TARGET:g}x' if name == 'concurrent' else ''}")
    print("best of rounds: " + ", ".join(f"{name} {v:.1f} req/s" for name, v in best.items())
          + f"; direct pipe.run one by one in this process: {direct_rps:.1f} req/s")
    for name, sizes in mean_batch.items():
        print(f"mean size of the model calls serving each task ({name}{'; rows per decoding step' if name == 'concurrent' else ''}): "
              + ", ".join(f"{t} {v:.1f}" for t, v in sorted(sizes.items())))
    print(f"server RSS: {rss_before:.0f} MiB after warm-up, {rss_after:.0f} MiB after all rounds "
          f"({rss_after - rss_before:+.0f} MiB)")

    result = {
        "benchmark": "serve_load", "command": "python benchmarks/serve_load.py " + " ".join(argv or sys.argv[1:]),
        "model": args.model, "tasks": args.tasks, "requests": args.n, "good": good, "bad": args.n - good, "clients": args.clients,
        "threads": args.threads, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "rounds": args.rounds,
        "cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
        "phases": rows, "checks": checks, "speedup": speedup, "speedups": speedups, "target": TARGET,
        "arms": {name: {"server_flags": ARMS[name][1], "speedup": float(np.median(ratio[name])),
                        "speedups": ratio[name]} for name in arms},
        "meets_target": speedup >= TARGET, "best_rps": best, "direct_sequential_rps": direct_rps,
        "mean_batch_size": mean_batch, "rss_mib": {"after_warmup": rss_before, "after_all_rounds": rss_after},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    clean = all(c["lost"] == 0 and c["mixed_up"] == 0 and c["bad_answered_right"] == c["bad"] for c in checks)
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
