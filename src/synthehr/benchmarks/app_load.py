"""Load benchmark of the clinician web app: Reconstruct latency under concurrent clients on loopback.

Starts `synthehr serve` in a subprocess on 127.0.0.1 with an ephemeral port, then runs C concurrent
clients (default 50), each with its own keep-alive HTTP/1.1 connection, sending Reconstruct requests
back to back (closed loop; `--think-ms` adds a pause between a client's requests). Every request is
different: a real time point of a demo stay, 1-5 fixed salient features with jittered values. Each
client sends at most `--requests` requests and stops at `--duration` seconds, so a run is bounded.

Results (suite `app`, long format): reconstruct_p50_ms, reconstruct_p95_ms, reconstruct_p99_ms,
reconstruct_mean_ms, throughput_rps, requests, errors, concurrency. Target: p95 <= 100 ms, 0 errors.

    synthehr benchmark app [--clients 50] [--requests 40] [--data PREPARED --model MODEL_DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATASET = "mimic-iv-demo"
REPO = Path(__file__).resolve().parents[3]
DEMO_RAW = REPO / "data" / "demo" / "mimic-iv-demo-2.2"
DEMO_MEDS = REPO / "data" / "demo" / "mimic-iv-demo-meds"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthehr benchmark app", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="prepared folder (default: the bundled demo, prepared into a temp folder)")
    p.add_argument("--model", help="model folder (default: a gaussian trained on --data)")
    p.add_argument("--clients", type=int, default=50, help="concurrent clients (default 50)")
    p.add_argument("--requests", type=int, default=40, help="requests per client (default 40)")
    p.add_argument("--warmup", type=int, default=100, help="requests sent before measuring (default 100)")
    p.add_argument("--duration", type=float, default=120.0, help="stop measuring after this many seconds")
    p.add_argument("--think-ms", type=float, default=0.0, help="pause between one client's requests (default 0)")
    p.add_argument("--n-samples", type=int, default=20, help="draws per Reconstruct request (default 20)")
    p.add_argument("--workers", type=int, default=1, help="server worker processes (synthehr serve --workers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results", help="results folder")
    p.add_argument("--no-write", action="store_true", help="print the numbers only")
    return p


def _prepare_defaults(args, tmp: Path) -> tuple[Path, Path]:
    data = Path(args.data) if args.data else None
    if data is None:
        from synthehr.data import prepare

        data = tmp / "prepared"
        prepare("mimic-iv", DEMO_RAW, data, meds=DEMO_MEDS, progress=False)
    model = Path(args.model) if args.model else None
    if model is None:
        from synthehr.models.training import train_model

        model = tmp / "models" / "gaussian"
        train_model("gaussian", data, model)
    return data, model


def start_server(model: Path, data: Path | None, data_dir: Path, extra: list[str] | None = None,
                 timeout: float = 180.0) -> tuple[subprocess.Popen, int]:
    """`synthehr serve` on 127.0.0.1:0 in a subprocess; returns (process, port) once it listens."""
    cmd = [sys.executable, "-m", "synthehr.cli", "serve", "--host", "127.0.0.1", "--port", "0",
           "--model", str(model), "--data-dir", str(data_dir), *(extra or [])]
    if data is not None:
        cmd += ["--data", str(data)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
        if m:
            return proc, int(m.group(1))
    stop_server(proc)
    raise RuntimeError("the app server did not start:\n" + "".join(lines))


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.stdout:
        proc.stdout.close()


def request_bodies(data: Path, model_info: dict, n: int, n_samples: int, seed: int) -> list[bytes]:
    """n distinct Reconstruct bodies: real time points, 1-5 salient features fixed at jittered values."""
    import pandas as pd

    grid = pd.read_parquet(Path(data) / "icu_grid.parquet")
    feats = model_info["features"]
    names = [f["name"] for f in feats]
    salient = [f for f in feats if f["salient"] and f["kind"] == "continuous"] or \
        [f for f in feats if f["kind"] == "continuous"]
    rng = np.random.default_rng(seed)
    rows = grid.iloc[rng.integers(0, len(grid), n)]
    bodies = []
    for i, (_, r) in enumerate(rows.iterrows()):
        values = {k: (float(r[k]) if k in r.index and pd.notna(r[k]) else None) for k in names}
        fixed = []
        for f in rng.choice(salient, size=int(rng.integers(1, 6)), replace=False):
            lo, hi = f["slider_min"], f["slider_max"]
            v = values.get(f["name"])
            v = float(np.clip((v if v is not None else (lo + hi) / 2) + rng.normal(0, 0.1) * f["std"], lo, hi))
            values[f["name"]] = round(v, 4)
            fixed.append(f["name"])
        bodies.append(json.dumps({"model": model_info["id"], "values": values, "fixed": fixed,
                                  "n_samples": n_samples, "seed": i}).encode())
    return bodies


async def _roundtrip(reader, writer, port: int, body: bytes) -> tuple[int, bytes]:
    head = (f"POST /api/reconstruct HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    writer.write(head + body)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    payload = await reader.readexactly(length) if length else b""
    return status, payload


async def _client(k: int, port: int, bodies: list[bytes], n: int, stop_at: float, think: float,
                  latencies: list[float], errors: list[str]) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as e:
        errors.extend([f"connect: {e}"] * n)
        return
    try:
        for i in range(n):
            if time.perf_counter() > stop_at:
                break
            body = bodies[(k * 7919 + i) % len(bodies)]
            t0 = time.perf_counter()
            try:
                status, payload = await asyncio.wait_for(_roundtrip(reader, writer, port, body), 30)
            except (OSError, asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            dt = time.perf_counter() - t0
            if status != 200:
                errors.append(f"HTTP {status}: {payload[:200]!r}")
            else:
                latencies.append(dt)
            if think:
                await asyncio.sleep(think)
    finally:
        writer.close()


async def run_load(port: int, bodies: list[bytes], clients: int, requests: int, duration: float,
                   think_ms: float, warmup: int) -> dict:
    warm_lat: list[float] = []
    warm_err: list[str] = []
    if warmup:
        await asyncio.gather(*[_client(k, port, bodies, max(1, warmup // 10), time.perf_counter() + 60, 0,
                                       warm_lat, warm_err) for k in range(10)])
    latencies: list[float] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    await asyncio.gather(*[_client(k, port, bodies, requests, t0 + duration, think_ms / 1000, latencies, errors)
                           for k in range(clients)])
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {
        "requests": len(latencies) + len(errors), "errors": len(errors), "error_examples": errors[:5],
        "wall_s": wall, "throughput_rps": len(latencies) / wall if wall else 0.0,
        "p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p95": float(np.percentile(lat, 95)) if lat.size else float("nan"),
        "p99": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "mean": float(lat.mean()) if lat.size else float("nan"),
        "max": float(lat.max()) if lat.size else float("nan"),
        "warmup_errors": len(warm_err),
    }


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its child processes (Linux /proc), None elsewhere."""
    def stat(p) -> list[str]:
        return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()

    try:
        total = 0.0
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                f = stat(d.name)
            except OSError:
                continue
            if int(d.name) == pid or int(f[1]) == pid:  # f[1] = parent pid
                total += int(f[11]) + int(f[12])
        return total / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _get_json(port: int, path: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.loads(r.read())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="synthehr-app-load-") as tmpdir:
        tmp = Path(tmpdir)
        data, model = _prepare_defaults(args, tmp)
        proc, port = start_server(model, data, tmp / "userdata", extra=["--workers", str(args.workers)])
        try:
            info = _get_json(port, "/api/info")
            model_id = info["models"][0]["id"]
            model_info = _get_json(port, f"/api/models/{model_id}")
            bodies = request_bodies(data, model_info, 400, args.n_samples, args.seed)
            cpu0 = _cpu_seconds(proc.pid)
            res = asyncio.run(run_load(port, bodies, args.clients, args.requests, args.duration, args.think_ms,
                                       args.warmup))
            cpu1 = _cpu_seconds(proc.pid)
        finally:
            stop_server(proc)
    model_type = model_info.get("model_type", "model")
    n_ok = res["requests"] - res["errors"]
    # includes the (small) warm-up share: CPU is read around the whole run_load call
    res["server_cpu_ms"] = ((cpu1 - cpu0) * 1000 / (n_ok + args.warmup)) if cpu0 is not None and n_ok else None
    print(f"reconstruct under {args.clients} concurrent clients ({res['requests']} requests, "
          f"think {args.think_ms:g} ms): p50 {res['p50']:.1f} ms, p95 {res['p95']:.1f} ms, p99 {res['p99']:.1f} ms, "
          f"{res['throughput_rps']:.0f} req/s, errors {res['errors']}; server CPU "
          f"{res['server_cpu_ms'] if res['server_cpu_ms'] is None else round(res['server_cpu_ms'], 2)} ms/request")
    for e in res["error_examples"]:
        print("  error:", e)
    if not args.no_write:
        from synthehr.benchmarks.results import make_row, write_results

        extra = {"clients": args.clients, "think_ms": args.think_ms, "n_samples": args.n_samples}
        rows = [make_row(model_type, "reconstruct_p50_ms", res["p50"], **extra),
                make_row(model_type, "reconstruct_p95_ms", res["p95"], **extra),
                make_row(model_type, "reconstruct_p99_ms", res["p99"], **extra),
                make_row(model_type, "reconstruct_mean_ms", res["mean"], **extra),
                make_row(model_type, "throughput_rps", res["throughput_rps"], **extra),
                make_row(model_type, "requests", res["requests"], **extra),
                make_row(model_type, "server_cpu_ms_per_request", res["server_cpu_ms"], **extra),
                make_row(model_type, "errors", res["errors"], **extra),
                make_row(model_type, "concurrency", args.clients, **extra)]
        notes = [f"Reconstruct requests ({args.n_samples} draws each) from {args.clients} concurrent keep-alive "
                 f"clients on loopback, closed loop with {args.think_ms:g} ms think time, server and clients on "
                 f"the same {os.cpu_count()}-core machine; target p95 <= 100 ms with 0 errors"]
        j, _ = write_results("app", DATASET, rows, out_dir=args.out, notes=notes)
        print(f"results: {j}")
    return 0 if res["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
