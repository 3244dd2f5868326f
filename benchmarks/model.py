"""Inference throughput of the shipped classifier: images per second at batch 1 and 64, bare
PyTorch, with memory-format and precision variants measured side by side against plain float32.

    .venv/bin/python benchmarks/model.py [--json] [--device cpu|cuda] [--rounds 7]

Variants: ``fp32`` (the baseline: contiguous float32), ``channels_last`` (NHWC float32) and,
where the device supports it fast, ``bf16_autocast`` (CUDA always; CPU only with AVX512-BF16/AMX,
else it is reported as skipped with the reason). Each variant is timed in alternation with the
baseline in the same process, and the ratio to the baseline is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
try:
    import signwatch  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "shared"))

from signwatch.model import load_model  # noqa: E402
from timing import timed  # noqa: E402  (benchmarks/timing.py)


def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/model.py: CUDA asked for but not available", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    model, spec = load_model(device=device)
    nhwc = load_model(device=device)[0].to(memory_format=torch.channels_last)
    variants = {
        "fp32": lambda x: model(x),
        "channels_last": lambda x: nhwc(x.contiguous(memory_format=torch.channels_last)),
    }
    skipped = {}
    if device.type == "cuda" or cpu_has_fast_bf16():
        def bf16(x):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return nhwc(x.contiguous(memory_format=torch.channels_last))
        variants["bf16_autocast"] = bf16
    else:
        skipped["bf16_autocast"] = "this CPU has no AVX512-BF16 or AMX: bf16 would be emulated"

    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "threads": torch.get_num_threads(), "model_version": spec.version,
                     "input_size": spec.input_size, "skipped": skipped, "batches": {}}
    with torch.inference_mode():
        for batch in (1, 64):
            x = torch.rand(batch, 3, spec.input_size, spec.input_size, device=device)
            for fn in variants.values():  # warm-up: kernel selection, allocator
                fn(x), fn(x)
            times = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, fn in variants.items():  # alternate so every variant sees the same load
                    times[name].append(timed(lambda: fn(x), device))
            base = statistics.median(times["fp32"])
            results["batches"][str(batch)] = {
                name: {"images_per_s": round(batch / statistics.median(t), 1),
                       "speedup_vs_fp32": round(base / statistics.median(t), 3)}
                for name, t in times.items()
            }
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{results['device']}, {results['threads']} threads, {spec.version}, {spec.input_size}px")
        for batch, row in results["batches"].items():
            for name, r in row.items():
                print(f"batch {batch:>3} {name:<14} {r['images_per_s']:>9.1f} img/s  x{r['speedup_vs_fp32']:.2f} vs fp32")
        for name, why in skipped.items():
            print(f"{name}: skipped ({why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
