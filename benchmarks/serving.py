"""Serving throughput and latency, one run on one machine, printed as ratios against baselines
measured in the same run:

- ``bare``: bare PyTorch, batch-32 forward passes of the shipped model on ready tensors (images/s),
  eager, with PyTorch's default threads (one per core): what a user's own loop gets. The server
  runs frozen graphs (signwatch.model.frozen), so beside it ``bare_frozen``: the same graphs on the
  same threads, and ``bare_two_workers``: the server's own arrangement (two threads, each
  forwarding batches of 32 of the frozen graph on one PyTorch thread). The serving overhead
  proper is read off against these two; against ``bare`` the ratio also holds the graphs' gain
- ``rest``: the inference service as users run it (``signwatch serve inference``: uvicorn +
  httptools + uvloop, the micro-batcher, its default settings), driven by Debian's ``wrk``
  (compiled: the client takes little of the server's CPU) with 32 and 64 connections, capture off
  (no events) and on (events to Kafka, the capture service in its own process writing SageMaker
  JSON lines to S3)
- ``naive``: a handler that decodes and runs one forward per request, no batching
- ``capture``: records per second the capture service writes into S3 (its own run over a topic
  filled beforehand)

    make wrk                                   # apt-get install wrk (once)
    .venv/bin/python benchmarks/serving.py [--json] [--duration 5] [--rounds 3] [--profile FILE]
    .venv/bin/python benchmarks/serving.py --model model.tar.gz | --families   # any model: serving_models.py

Each bare variant runs in a child process of its own (PyTorch's thread count is process-wide).

Capture needs the local stack (``signwatch stack up``); without it the capture figures are
skipped with the reason. ``--profile`` records the server with py-spy during the 32-connection
REST run and writes its top functions (where the per-request time goes). All servers run side by
side and the variants are measured in interleaved rounds (medians kept), so that other load on the
machine moves every variant alike.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from fastapi import Request  # module level: the naive route's annotation resolves here

ROOT = Path(__file__).resolve().parents[1]
try:
    import signwatch  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "shared"))

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/png"
local f = assert(io.open(os.getenv("SIGNWATCH_BENCH_BODY"), "rb"))
wrk.body = f:read("*all")
f:close()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sign_png() -> bytes:
    from signwatch.data.render import render_array
    from signwatch.imaging import encode_png

    images, _ = render_array(1, seed=11, split="test", size=64)
    return encode_png(images[0])


# ---------------------------------------------------------------- servers (run in child processes)
def serve_naive(port: int) -> None:
    """One request, one decode, one forward: what a handler without batching does."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from signwatch.imaging import decode_image
    from signwatch.model import load_model, preprocess

    model, spec = load_model(None)
    model = model.to(memory_format=torch.channels_last).eval()
    app = FastAPI()

    @app.post("/invocations")
    async def invocations(request: Request) -> JSONResponse:
        image = decode_image(await request.body(), request.headers.get("content-type"))
        batch = preprocess([image], spec).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            probs = torch.softmax(model(batch).float(), 1)[0]
        values, idx = probs.topk(5)
        return JSONResponse({"predictions": [{"class_id": int(c), "label": spec.class_names[int(c)],
                                              "probability": float(p)} for p, c in zip(values, idx)]})

    @app.get("/health/live")
    async def live() -> dict:
        return {"alive": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", http="httptools", loop="uvloop",
                access_log=False)


# ---------------------------------------------------------------- measurements
def bare_images_per_s(seconds: float, workers: int | None = None, graph: str = "eager",
                      model_path: str | None = None) -> float:
    """Batch-32 forwards for ``seconds`` (one batch at least) of the shipped model or ``model_path``.
    ``workers``: that many threads at once, one PyTorch thread each (the server's arrangement);
    None: one loop on PyTorch's default threads. ``graph``: the eager model, or the frozen graphs
    the server runs."""
    import threading

    import torch

    from signwatch.model import load_model
    from signwatch.model.frozen import FrozenForward

    if workers:
        torch.set_num_threads(1)
    model, spec = load_model(model_path)
    model = model.to(memory_format=torch.channels_last).eval()
    if graph == "frozen":
        model = FrozenForward(model, spec)
    done = [0] * (workers or 1)

    def run(i: int, until: float) -> None:
        batch = torch.randn(32, 3, spec.input_size, spec.input_size).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            while time.perf_counter() < until or done[i] == 0:
                model(batch)
                done[i] += 32

    run(0, time.perf_counter() + 0.5)  # warm-up
    done[0] = 0
    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i, t0 + seconds)) for i in range(workers or 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def _bare_in_child(seconds: float, workers: int | None, graph: str, model_path: str | None = None) -> float:
    out = subprocess.run([sys.executable, __file__, "--bare", str(workers or 0), "--graph", graph,
                          "--duration", str(seconds), *(["--bare-model", str(model_path)] if model_path else [])],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _start(kind: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    argv = ([sys.executable, "-m", "signwatch_services.cli", "serve", "inference", "--port", str(port)]
            if kind == "rest" else [sys.executable, __file__, "--serve", kind, "--port", str(port)])
    log = tempfile.TemporaryFile()  # the server's log, read back if it fails to start
    proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{kind} server exited: {log.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_idle(procs: list[subprocess.Popen], deadline_s: float = 60.0) -> None:
    """Until no server takes CPU (under 5% of a core over 0.25 s). The naive server, whose
    handler blocks its event loop, went on answering a closed run's backlog for 5 s and more
    after wrk stopped, at one core: the next variant measured then had half the machine."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        before = {p.pid: _cpu_seconds(p.pid) for p in procs}
        time.sleep(0.25)
        if all(_cpu_seconds(p.pid) - before[p.pid] < 0.0125 for p in procs):
            return
    raise RuntimeError(f"the servers were still busy {deadline_s:g} s after a run")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wrk(url: str, body: Path, connections: int, seconds: float, script: Path, path: str = "/invocations",
         extra_env: dict[str, str] | None = None) -> dict:
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "--latency", "--timeout", "10s",
         "-s", str(script), f"{url}{path}"],
        capture_output=True, text=True, env={**os.environ, "SIGNWATCH_BENCH_BODY": str(body), **(extra_env or {})},
        check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": ms("50"), "p99_ms": ms("99"), "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else None}


def _profile(pid: int, seconds: float, out: Path) -> None:
    """py-spy's top functions of the server while wrk drives it."""
    raw = out.with_suffix(".speedscope.json")
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    subprocess.run([spy, "record", "-p", str(pid), "-d", f"{int(seconds)}", "-f", "raw", "-o",
                    str(out.with_suffix(".folded")), "--nonblocking"], capture_output=True, check=False)
    folded = out.with_suffix(".folded")
    if not folded.exists():
        out.write_text("py-spy produced nothing (ptrace not permitted?)\n")
        return
    own, total = {}, 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        for frame in set(stack.split(";")):
            own[frame] = own.get(frame, 0) + n
    top = sorted(own.items(), key=lambda kv: -kv[1])[:60]
    out.write_text("".join(f"{100 * n / total:5.1f}%  {frame}\n" for frame, n in top))
    raw.unlink(missing_ok=True)


def _stack_env(unique: str) -> dict[str, str] | None:
    from signwatch.stack import stack_env, status

    if not status(ROOT).all_up:
        return None
    env = stack_env(ROOT)
    return {**env, "SIGNWATCH_INFERENCE_TOPIC": f"bench-{unique}.inference",
            "SIGNWATCH_CAPTURE_PREFIX": f"bench-{unique}/datacapture",
            "SIGNWATCH_CAPTURE_GROUP": f"bench-{unique}.capture"}


def capture_records_per_s(env: dict[str, str]) -> tuple[float, int]:
    """Run the capture service over the topic the REST run filled; records written per second."""
    from signwatch.config import Settings
    from signwatch.runtime import open_ports
    from signwatch_services.capture.server import build_loop

    settings = Settings(**{k.removeprefix("SIGNWATCH_").lower(): v for k, v in env.items()},
                        capture_batch_records=500, capture_flush_seconds=1.0)
    ports = open_ports(settings)
    loop = build_loop(settings, ports)
    handler = loop.handler
    t0 = time.perf_counter()
    last, idle_since = 0, time.perf_counter()
    thread = loop.start_thread()
    while time.perf_counter() - idle_since < 5:  # until 5 s pass with nothing new written
        time.sleep(0.25)
        written = handler.batcher.records_written
        if written != last:
            last, idle_since = written, time.perf_counter()
    loop.stop()
    thread.join(30)
    elapsed = idle_since - t0
    for key in ports.store.list(settings.capture_prefix):
        ports.store.delete(key)
    ports.close()
    return (last / elapsed if elapsed > 0 else 0.0), last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are kept")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy top functions to this file")
    parser.add_argument("--model", action="append", default=[], metavar="PATH",
                        help="measure this model instead (any SIGNWATCH_MODEL_PATH form; repeatable): "
                             "SageMaker and V2 routes against bare PyTorch (benchmarks/serving_models.py)")
    parser.add_argument("--families", action="store_true",
                        help="measure a seeded model of every architecture family at 224 px instead")
    parser.add_argument("--serve", choices=["naive"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--graph", choices=["eager", "frozen"], default="eager", help=argparse.SUPPRESS)
    parser.add_argument("--bare-model", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_naive(args.port)
        return 0
    if args.bare is not None:
        print(bare_images_per_s(args.duration, args.bare or None, args.graph, args.bare_model))
        return 0
    if shutil.which("wrk") is None:
        print("error: wrk not found; install it with `make wrk` (apt-get install wrk)", file=sys.stderr)
        return 2
    if args.model or args.families:
        import serving_models

        return serving_models.run(args.model, args.families, args.duration, args.rounds, args.json)

    tmp = Path(tempfile.mkdtemp(prefix="signwatch-bench-"))
    body, script = tmp / "sign.png", tmp / "post.lua"
    body.write_bytes(_sign_png())
    script.write_text(WRK_SCRIPT)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    d = args.duration
    result: dict = {"machine": f"{os.cpu_count()} CPUs", "duration_s": d, "body_bytes": body.stat().st_size}

    unique = uuid.uuid4().hex[:8]
    env = _stack_env(unique)
    off_env = {"SIGNWATCH_PUBLISH_EVENTS": "false", "SIGNWATCH_BUS_URL": "memory://",
               "SIGNWATCH_STORE_URL": (tmp / "store").as_uri(), "SIGNWATCH_STATE_URL": "memory://"}
    say("starting the naive, REST and REST-with-capture servers ...")
    servers = {"naive": _start("naive", {}), "rest": _start("rest", off_env)}
    if env is None:
        result["capture_skipped"] = "the local stack is not up (signwatch stack up)"
    else:
        servers["rest_capture"] = _start("rest", env)
    # Every variant runs once per round, rounds interleaved, medians kept: the machine's other load
    # drifts, and variants measured minutes apart would compare that drift, not the servers.
    runs = {"bare": [], "bare_frozen": [], "bare_two_workers": [], "naive_32": [], "naive_64": [], "rest_1": [], "rest_32": [],
            "rest_64": [], "rest_1_capture": [], "rest_32_capture": []}
    plan = [("naive_32", "naive", 32), ("naive_64", "naive", 64), ("rest_1", "rest", 1), ("rest_32", "rest", 32),
            ("rest_64", "rest", 64), ("rest_1_capture", "rest_capture", 1), ("rest_32_capture", "rest_capture", 32)]
    try:
        procs = [proc for proc, _ in servers.values()]
        for _, server, conns in plan:  # warm-up
            if server in servers:
                _wrk(servers[server][1], body, conns, 2, script)
                _wait_idle(procs)
        for r in range(args.rounds):
            say(f"round {r + 1}/{args.rounds}: bare (3 ways), naive 32/64, REST 1/32/64, REST with capture 1/32 "
                f"({d:g} s each)")
            runs["bare"].append(_bare_in_child(d, None, "eager"))
            runs["bare_frozen"].append(_bare_in_child(d, None, "frozen"))
            runs["bare_two_workers"].append(_bare_in_child(d, 2, "frozen"))
            for key, server, conns in plan:
                if server not in servers:
                    continue
                profiling = args.profile and key == "rest_32" and r == 0
                if profiling:
                    import threading

                    prof = threading.Thread(target=_profile, args=(servers[server][0].pid, d, args.profile))
                    prof.start()
                runs[key].append(_wrk(servers[server][1], body, conns, d, script))
                if profiling:
                    prof.join()
                    result["profile"] = str(args.profile)
                _wait_idle(procs)
    finally:
        for proc, _ in servers.values():
            _stop(proc)
    result["bare_images_per_s"] = statistics.median(runs["bare"])
    result["bare_frozen_images_per_s"] = statistics.median(runs["bare_frozen"])
    result["bare_two_workers_images_per_s"] = statistics.median(runs["bare_two_workers"])
    result["rounds"] = args.rounds
    for key, values in runs.items():
        if not key.startswith("bare") and values:
            result[key] = {
                "requests_per_s": statistics.median(v["requests_per_s"] for v in values),
                "p50_ms": statistics.median(v["p50_ms"] for v in values),
                "p99_ms": statistics.median(v["p99_ms"] for v in values),
                "non_2xx": sum(v["non_2xx"] for v in values),
                "rounds": [v["requests_per_s"] for v in values],
            }
    if env is not None:
        say("capture service: records into S3 ...")
        rate, records = capture_records_per_s(env)
        result["capture_records_per_s"] = rate
        result["capture_records"] = records

    # the better of 32 and 64 clients, against the naive handler at the same number of clients
    conns = max((32, 64), key=lambda c: result[f"rest_{c}"]["requests_per_s"])
    best = result[f"rest_{conns}"]["requests_per_s"]
    result["rest_best_connections"] = conns
    result["rest_vs_bare_ratio"] = best / result["bare_images_per_s"]
    result["rest_vs_bare_frozen_ratio"] = best / result["bare_frozen_images_per_s"]
    result["rest_vs_bare_two_workers_ratio"] = best / result["bare_two_workers_images_per_s"]
    naive = result[f"naive_{conns}"]["requests_per_s"]
    result["rest_vs_naive_ratio"] = best / naive if naive else None
    result["load_average"] = os.getloadavg()  # other work on the machine skews every figure
    if "rest_32_capture" in result:  # under load (32 clients), and for one client alone
        on, off = result["rest_32_capture"]["p50_ms"], result["rest_32"]["p50_ms"]
        result["capture_p50_overhead_pct"] = 100 * (on - off) / off
        result["capture_p99_ms"] = result["rest_32_capture"]["p99_ms"]
        on, off = result["rest_1_capture"]["p50_ms"], result["rest_1"]["p50_ms"]
        result["capture_p50_overhead_pct_1_client"] = 100 * (on - off) / off
    shutil.rmtree(tmp, ignore_errors=True)
    failed = [k for k, v in result.items() if isinstance(v, dict) and v.get("non_2xx")]
    if failed:  # a ratio over failing requests would measure nothing
        result["error"] = f"non-2xx answers in {', '.join(failed)}"

    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"bare PyTorch batch 32:      {result['bare_images_per_s']:8.1f} images/s (eager)")
        print(f"bare, frozen graphs:        {result['bare_frozen_images_per_s']:8.1f} images/s")
        print(f"bare, 2 workers x 1 thread: {result['bare_two_workers_images_per_s']:8.1f} images/s (frozen)")
        for key in ("naive_32", "naive_64", "rest_1", "rest_32", "rest_64", "rest_1_capture", "rest_32_capture"):
            if key in result:
                r = result[key]
                print(f"{key:26s}  {r['requests_per_s']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                      f"p99 {r['p99_ms']:7.2f} ms  non-2xx {r['non_2xx']}")
        naive_ratio = result["rest_vs_naive_ratio"]
        print(f"REST / bare:   {result['rest_vs_bare_ratio']:.2f}x   (/ bare frozen: "
              f"{result['rest_vs_bare_frozen_ratio']:.2f}x, / bare 2 workers: "
              f"{result['rest_vs_bare_two_workers_ratio']:.2f}x)   REST / naive: "
              f"{f'{naive_ratio:.2f}x' if naive_ratio else 'n/a (naive served nothing)'}   "
              f"load average {result['load_average'][0]:.1f}")
        if "capture_p50_overhead_pct" in result:
            print(f"capture adds {result['capture_p50_overhead_pct']:+.1f}% to p50 at 32 clients, "
                  f"{result['capture_p50_overhead_pct_1_client']:+.1f}% for one client; "
                  f"{result['capture_records_per_s']:.0f} records/s into S3")
        else:
            print(f"capture: {result.get('capture_skipped')}")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    raise SystemExit(main())
