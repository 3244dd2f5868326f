"""Serving any model: ``benchmarks/serving.py --model PATH`` (or ``--families``), its REST
throughput over the SageMaker route and over the Open Inference Protocol (V2) route, each as a
ratio against bare PyTorch on the same model in the same run.

- ``bare``: batch-32 eager forwards on ready tensors at the model's input size, PyTorch's default
  threads (one per core): what a user's own loop gets; beside it ``bare_two_workers``: the
  server's arrangement (two threads, one PyTorch thread each, the served graph)
- ``sagemaker``: ``POST /invocations`` with a PNG at the model's input size, driven by wrk with 16
  connections (enough for two workers' batches: 32 added nothing at 224 px), each run long enough
  for 400 images at the bare rate, so that the requests in flight when it starts (wrk counts a
  request when it completes) weigh 4% at most
- ``v2``: ``POST /v2/models/{name}/infer`` with the same PNG as a ``BYTES`` tensor in binary and
  the outputs asked in binary, as tritonclient sends them

``--families`` writes one seeded torchvision model per registered family at its usual input
size (224 px) and measures each; ``--model`` takes any ``SIGNWATCH_MODEL_PATH`` form (a SageMaker
``model.tar.gz`` or ``.pth`` is imported first). Servers run with events off: what is measured is
the serving path, the capture cost is ``serving.py``'s own figure.

    .venv/bin/python benchmarks/serving.py --families --json
    .venv/bin/python benchmarks/serving.py --model model.tar.gz --model other.safetensors
"""

from __future__ import annotations

import json
import statistics
import struct
import sys
import tempfile
from pathlib import Path

import serving  # benchmarks/serving.py: the servers, wrk and the idle wait

# One model per family at 224 px with the GTSRB head of the write-up's model, the cheapest member
# of each family (VGG11-BN: 7.6 GFLOPs an image).
FAMILY_MODELS = {"resnet": "resnet18", "vgg": "vgg11_bn", "regnet": "regnet_x_400mf", "densenet": "densenet121",
                 "mobilenet_v3": "mobilenet_v3_large", "efficientnet": "efficientnet_b0"}

CONNECTIONS = 16
IMAGES_PER_RUN = 400
MAX_SECONDS = 90

V2_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = os.getenv("SIGNWATCH_BENCH_HEADER_LENGTH")
local f = assert(io.open(os.getenv("SIGNWATCH_BENCH_BODY"), "rb"))
wrk.body = f:read("*all")
f:close()
"""


def family_models(folder: Path) -> list[Path]:
    """A seeded model of each family at 224 px, written as signwatch safetensors."""
    from signwatch.data.classes import CLASS_NAMES
    from signwatch.model import architectures
    from signwatch.model.core import ModelSpec, save_model

    paths = []
    for name in FAMILY_MODELS.values():
        spec = ModelSpec(architecture=name, input_size=architectures.get(name).input_size, class_names=CLASS_NAMES,
                         version=f"bench-{name}")
        paths.append(save_model(architectures.build(name, len(CLASS_NAMES), seed=0), spec,
                                folder / f"{name}.safetensors", half=False))
    return paths


def signwatch_weights(path: str, folder: Path) -> Path:
    """``path`` as signwatch safetensors + manifest (imported first when it is not)."""
    from signwatch.config import Settings
    from signwatch.model.remote import resolve_model_path

    return resolve_model_path(Settings(model_path=path, model_cache_dir=folder / "cache"))


def v2_body(png: bytes) -> tuple[bytes, int]:
    """A V2 request for one PNG, all binary (tritonclient's ``binary_data=True``)."""
    header = json.dumps({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 4 + len(png)}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                                     {"name": "class_ids", "parameters": {"binary_data": True}}]}).encode()
    return header + struct.pack("<I", len(png)) + png, len(header)


def _bare(path: Path, seconds: float, workers: int | None) -> float:
    """Bare PyTorch on the model: eager on the default threads, or the server's two workers."""
    return serving._bare_in_child(seconds, workers, "frozen" if workers else "eager", str(path))


def measure(path: Path, seconds: float, rounds: int, tmp: Path, say) -> dict:
    from signwatch.data.render import render_array
    from signwatch.imaging import encode_png
    from signwatch.model.core import load_spec

    spec = load_spec(path)
    png = encode_png(render_array(1, seed=11, split="test", size=spec.input_size)[0][0])
    bodies = {"sagemaker": tmp / f"{path.stem}.png", "v2": tmp / f"{path.stem}.v2"}
    bodies["sagemaker"].write_bytes(png)
    body, header_length = v2_body(png)
    bodies["v2"].write_bytes(body)
    scripts = {"sagemaker": tmp / "post.lua", "v2": tmp / "v2.lua"}
    scripts["sagemaker"].write_text(serving.WRK_SCRIPT)
    scripts["v2"].write_text(V2_SCRIPT)
    routes = {"sagemaker": "/invocations", "v2": "/v2/models/signwatch/infer"}
    env = {"SIGNWATCH_MODEL_PATH": str(path), "SIGNWATCH_PUBLISH_EVENTS": "false", "SIGNWATCH_BUS_URL": "memory://",
           "SIGNWATCH_STORE_URL": (tmp / "store").as_uri(), "SIGNWATCH_STATE_URL": "memory://",
           "SIGNWATCH_BENCH_HEADER_LENGTH": str(header_length)}
    say(f"{spec.architecture} at {spec.input_size} px: starting the server ...")
    proc, url = serving._start("rest", env)
    runs: dict[str, list] = {"bare": [], "bare_two_workers": [], **{r: [] for r in routes}}
    try:
        for route in routes:  # warm-up, and a check that the route answers 200
            warm = serving._wrk(url, bodies[route], 4, 2, scripts[route], path=routes[route],
                                extra_env={"SIGNWATCH_BENCH_HEADER_LENGTH": str(header_length)})
            if warm["non_2xx"] or not warm["requests_per_s"]:
                raise RuntimeError(f"{route} route of {path.name} does not answer 200: {warm}")
            serving._wait_idle([proc])
        duration = seconds
        for r in range(rounds):
            runs["bare"].append(_bare(path, duration, None))
            duration = round(min(MAX_SECONDS, max(seconds, IMAGES_PER_RUN / runs["bare"][0])))  # wrk takes whole seconds
            say(f"  round {r + 1}/{rounds}: bare (2 ways), SageMaker and V2 routes ({duration:.0f} s each)")
            runs["bare_two_workers"].append(_bare(path, duration, 2))
            for route in routes:
                runs[route].append(serving._wrk(url, bodies[route], CONNECTIONS, duration, scripts[route],
                                                path=routes[route],
                                                extra_env={"SIGNWATCH_BENCH_HEADER_LENGTH": str(header_length)}))
                serving._wait_idle([proc])
    finally:
        serving._stop(proc)
    out: dict = {"architecture": spec.architecture, "family": spec.arch.family, "input_size": spec.input_size,
                 "classes": spec.num_classes, "bare_images_per_s": statistics.median(runs["bare"]),
                 "bare_two_workers_images_per_s": statistics.median(runs["bare_two_workers"])}
    for route in routes:
        values = runs[route]
        rate = statistics.median(v["requests_per_s"] for v in values)
        out[route] = {"connections": CONNECTIONS, "seconds": duration, "requests_per_s": rate,
                      "p50_ms": statistics.median(v["p50_ms"] for v in values),
                      "p99_ms": statistics.median(v["p99_ms"] for v in values),
                      "non_2xx": sum(v["non_2xx"] for v in values),
                      "vs_bare_ratio": rate / out["bare_images_per_s"],
                      "vs_bare_two_workers_ratio": rate / out["bare_two_workers_images_per_s"]}
    return out


def run(models: list[str], families: bool, seconds: float, rounds: int, as_json: bool) -> int:
    import os

    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if as_json else print
    tmp = Path(tempfile.mkdtemp(prefix="signwatch-bench-models-"))
    paths = family_models(tmp) if families else []
    paths += [signwatch_weights(m, tmp) for m in models]
    results = [measure(p, seconds, rounds, tmp, say) for p in paths]
    summary = {"machine": f"{os.cpu_count()} CPUs", "duration_s": seconds, "rounds": rounds, "models": results,
               "load_average": os.getloadavg()}
    failed = [r["architecture"] for r in results if r["sagemaker"]["non_2xx"] or r["v2"]["non_2xx"]]
    if failed:
        summary["error"] = f"non-2xx answers for {', '.join(failed)}"
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{'model':22s} {'px':>4s} {'bare img/s':>10s} {'2 workers':>10s} {'SageMaker':>10s} {'ratio':>6s} "
              f"{'V2':>8s} {'ratio':>6s}")
        for r in results:
            print(f"{r['architecture']:22s} {r['input_size']:4d} {r['bare_images_per_s']:10.1f} "
                  f"{r['bare_two_workers_images_per_s']:10.1f} {r['sagemaker']['requests_per_s']:10.1f} "
                  f"{r['sagemaker']['vs_bare_ratio']:6.2f} {r['v2']['requests_per_s']:8.1f} {r['v2']['vs_bare_ratio']:6.2f}")
    return 1 if failed else 0
