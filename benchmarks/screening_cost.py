"""What each screening mode costs, measured side by side in one run:

- ``inference``: the inference service as users run it (``signwatch serve inference``, events off)
  with in-inference screening off and on (``SIGNWATCH_SCREENING_IN_INFERENCE``), both servers up
  at once and driven in interleaved rounds (medians kept) by a small keep-alive HTTP client with
  ``--connections`` connections posting one rendered sign (PNG): requests/s, p50 and p99 latency
- ``explainer``: the explainer's screening loop's work per core (one PyTorch thread): images/s of
  ``Screener.screen`` as the loop builds it (the eager model, batches of ``screening_batch_size``)
  against a bare forward of the same batches, eager and frozen; ``in_inference_forward``: the
  forward the inference worker runs with screening on (the frozen graph over the batch and its
  squeezed copies, the answer taken from the unsqueezed ones)

    .venv/bin/python benchmarks/screening_cost.py [--json] [--duration 4] [--rounds 3] [--connections 16]

The client runs in this process, on the same cores as the servers: it takes CPU from both modes
alike, so read the ratios rather than the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import signwatch  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "shared"))


def _sign_png() -> bytes:
    from signwatch.data.render import render_array
    from signwatch.imaging import encode_png

    images, _ = render_array(1, seed=11, split="test", size=64)
    return encode_png(images[0])


# ---------------------------------------------------------------- the inference service, off and on
def _start(env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "signwatch_services.cli", "serve", "inference", "--port", str(port)],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"server exited: {log.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


async def _connection(port: int, request: bytes, until: float, latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(1)
    finally:
        writer.close()


def drive(port: int, body: bytes, connections: int, seconds: float) -> dict:
    """``connections`` keep-alive clients posting ``body`` for ``seconds``: requests/s, p50, p99."""
    request = (f"POST /invocations HTTP/1.1\r\nHost: bench\r\nContent-Type: image/png\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []
    errors: list[int] = []

    async def run() -> float:
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(_connection(port, request, until, latencies, errors) for _ in range(connections)))
        return time.perf_counter() - started

    elapsed = asyncio.run(run())
    ordered = sorted(latencies)
    return {"requests_per_s": len(ordered) / elapsed, "p50_ms": 1000 * ordered[len(ordered) // 2],
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], "errors": len(errors)}


def inference_modes(duration: float, rounds: int, connections: int) -> dict:
    store = tempfile.mkdtemp(prefix="screening-cost-")
    base = {"SIGNWATCH_PUBLISH_EVENTS": "false", "SIGNWATCH_STORE_URL": Path(store).as_uri(),
            "SIGNWATCH_STATE_URL": "memory://", "SIGNWATCH_BUS_URL": f"memory://bench-{uuid.uuid4().hex[:6]}"}
    servers = {"off": _start({**base, "SIGNWATCH_SCREENING_IN_INFERENCE": "false"}),
               "on": _start({**base, "SIGNWATCH_SCREENING_IN_INFERENCE": "true"})}
    body = _sign_png()
    runs: dict[str, list[dict]] = {mode: [] for mode in servers}
    try:
        for mode, (_, port) in servers.items():  # warm-up: the graphs' first batches of each size
            drive(port, body, connections, 1.0)
        for _ in range(rounds):
            for mode, (_, port) in servers.items():
                runs[mode].append(drive(port, body, connections, duration))
                time.sleep(0.5)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    out = {mode: {k: round(statistics.median(r[k] for r in rs), 2) for k in ("requests_per_s", "p50_ms", "p99_ms")}
           | {"errors": sum(r["errors"] for r in rs)} for mode, rs in runs.items()}
    out["on_over_off"] = {k: round(out["on"][k] / out["off"][k], 3) for k in ("requests_per_s", "p50_ms", "p99_ms")}
    return out


# ---------------------------------------------------------------- the explainer's loop, per core
def explainer_mode(seconds: float, batch: int) -> dict:
    import torch

    from signwatch.classifier import Classifier
    from signwatch.data.render import render_array
    from signwatch.model import load_model, normalize
    from signwatch.model.frozen import served_forward
    from signwatch.screening import Screener
    from signwatch.screening.stored import SHIPPED
    from signwatch.screening.calibration import ScreeningCalibration
    from signwatch.screening.stored import StoredCalibration
    from signwatch.serving.screening import InlineScreening

    torch.set_num_threads(1)  # per core
    model, spec = load_model(None)
    model = model.eval().to(memory_format=torch.channels_last)
    images, _ = render_array(batch, seed=3, split="test", size=spec.input_size)
    cal = ScreeningCalibration.from_json(json.loads(SHIPPED.read_text()))
    explainer = Screener(model, spec, signal=cal.signal, squeezers=tuple(cal.squeezers))  # as the loop builds it
    x01 = explainer.unit(list(images))
    frozen = served_forward(model, spec, "frozen")
    classifier = Classifier(model=model, spec=spec, forward=frozen)
    inline = InlineScreening(Screener(model, spec, signal=cal.signal, squeezers=tuple(cal.squeezers), forward=frozen),
                             StoredCalibration(cal, "shipped", str(SHIPPED)))
    requests = [(image, str(i)) for i, image in enumerate(images)]
    normal = normalize(x01, spec).contiguous(memory_format=torch.channels_last)

    def rate(fn) -> float:
        fn()
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            fn()
            n += batch
        return n / (time.perf_counter() - started)

    with torch.inference_mode():
        result = {
            "explainer_screen_images_per_s": rate(lambda: explainer.screen(x01, cal)),
            "bare_forward_eager_images_per_s": rate(lambda: model(normal)),
            "bare_forward_frozen_images_per_s": rate(lambda: (frozen or model)(normal)),
            "inference_classify_images_per_s": rate(lambda: classifier.classify(requests)),
            "in_inference_forward_images_per_s": rate(lambda: inline.classify(classifier, requests)),
        }
    result = {k: round(v, 1) for k, v in result.items()}
    result["explainer_over_bare_eager"] = round(
        result["explainer_screen_images_per_s"] / result["bare_forward_eager_images_per_s"], 3)
    result["in_inference_over_classify"] = round(
        result["in_inference_forward_images_per_s"] / result["inference_classify_images_per_s"], 3)
    result.update(batch=batch, torch_threads=1, squeezers=list(cal.squeezers), input_size=spec.input_size)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are kept")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64, help="the explainer's batch (screening_batch_size)")
    parser.add_argument("--skip-inference", action="store_true")
    args = parser.parse_args(argv)
    result = {"explainer": explainer_mode(args.duration, args.batch)}
    if not args.skip_inference:
        result["inference"] = inference_modes(args.duration, args.rounds, args.connections)
        result["inference"]["connections"] = args.connections
    result["cpu_count"] = os.cpu_count()
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
