"""Inference latency with the run-time debugger off and on.

    .venv/bin/python benchmarks/debugger_latency.py [--json] [--repeats 20] [--threads N]

Times ``Classifier.predict`` (preprocessing, forward, top-k: the serving path) on the shipped model
from ``load_model()`` at its input size, for batch 1 and batch 8: once with the debugger off, once
on with the reference's include regex and sample rate 1, writing to a temporary FileStore. Off and
on calls alternate (medians over ``--repeats``), so load from other processes hits both alike; the
background writer is drained between calls, outside the timings, and timed on its own (ms per step):
while serving it runs in its thread beside the requests. Also reported: one step's size on disk.
Speed is reported, not enforced: it depends on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
try:
    import signwatch  # noqa: F401
except ImportError:  # running from a checkout that was not pip-installed
    sys.path.insert(0, str(ROOT / "shared"))

from signwatch.classifier import Classifier  # noqa: E402
from signwatch.debugger import DEFAULT_INCLUDE_REGEX, Debugger, DebuggerConfig  # noqa: E402
from signwatch.model import DEFAULT_WEIGHTS, load_model  # noqa: E402
from signwatch.ports.store_file import FileStore  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, spec = load_model()
    weights = DEFAULT_WEIGHTS.name if DEFAULT_WEIGHTS.exists() else "none shipped: seeded untrained model"
    rng = np.random.default_rng(0)
    results = {
        "model": f"{spec.architecture} {spec.version} ({weights})",
        "input_size": spec.input_size,
        "include_regex": DEFAULT_INCLUDE_REGEX,
        "sample_rate": 1.0,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "batches": {},
    }
    with tempfile.TemporaryDirectory(prefix="signwatch-debugger-bench-") as tmp:
        store = FileStore(Path(tmp))
        debugger = Debugger(store, "bench")
        classifier = Classifier(model=model, spec=spec, debugger=debugger)
        for batch_size in args.batch_sizes:
            images = [rng.integers(0, 256, (spec.input_size, spec.input_size, 3), dtype=np.uint8)
                      for _ in range(batch_size)]

            def call() -> None:
                classifier.predict([(img, uuid.uuid4().hex) for img in images])

            off_cfg = DebuggerConfig(enabled=False)
            on_cfg = DebuggerConfig(enabled=True, include_regex=DEFAULT_INCLUDE_REGEX, sample_rate=1.0)
            before = dict(debugger.counts)
            # Off and on alternate, so that load from other processes hits both alike. The writer is
            # drained between calls, outside the timings: "on" is the request path's own cost, the
            # writer's cost (a background thread while serving) is measured on its own.
            off_times, on_times, write_times = [], [], []
            for i in range(args.warmup + args.repeats):
                debugger.configure(off_cfg)
                start = time.perf_counter()
                call()
                off_ms = (time.perf_counter() - start) * 1000
                debugger.configure(on_cfg)
                start = time.perf_counter()
                call()
                on_ms = (time.perf_counter() - start) * 1000
                start = time.perf_counter()
                debugger.drain(300)
                write_ms = (time.perf_counter() - start) * 1000
                if i >= args.warmup:
                    off_times.append(off_ms)
                    on_times.append(on_ms)
                    write_times.append(write_ms / batch_size)
            debugger.configure(off_cfg)
            off, on = statistics.median(off_times), statistics.median(on_times)
            write_ms = statistics.median(write_times)
            dropped = debugger.counts["dropped"] - before["dropped"]

            step_dirs = sorted({k.rsplit("/", 1)[0] for k in store.list("tensors/bench/steps/")})
            last = step_dirs[-1]
            step_bytes = sum((Path(tmp) / k).stat().st_size for k in store.list(last + "/"))
            results["batches"][str(batch_size)] = {
                "off_ms": round(off, 2),
                "on_ms": round(on, 2),
                "ratio_on_off": round(on / off, 2),
                "off_ms_per_image": round(off / batch_size, 2),
                "on_ms_per_image": round(on / batch_size, 2),
                "writer_ms_per_step": round(write_ms, 2),
                "bytes_per_step": step_bytes,
                "steps_dropped": dropped,
            }
        debugger.close()
        results["steps_recorded"] = debugger.counts["recorded"]

    if args.json:
        print(json.dumps(results))
        return 0
    print(f"model: {results['model']}, input {spec.input_size}x{spec.input_size}, "
          f"torch {torch.__version__}, {results['torch_threads']} threads, median of {args.repeats}")
    print(f"debugger on: include_regex={DEFAULT_INCLUDE_REGEX!r}, sample_rate=1, FileStore in a temp folder")
    print(f"{'batch':>5} {'off ms':>9} {'on ms':>9} {'on/off':>7} {'writer ms/step':>15} {'KiB/step':>9} {'dropped':>8}")
    for batch_size, r in results["batches"].items():
        print(f"{batch_size:>5} {r['off_ms']:>9.2f} {r['on_ms']:>9.2f} {r['ratio_on_off']:>7.2f} "
              f"{r['writer_ms_per_step']:>15.2f} {r['bytes_per_step'] / 1024:>9.0f} {r['steps_dropped']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
