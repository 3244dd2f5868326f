"""Where steps live in the object store and how tensors are named.

    tensors/{endpoint}/steps/{step:012d}/{worker}/tensors.safetensors   every tensor of the step
    tensors/{endpoint}/steps/{step:012d}/{worker}/meta.json             request id, time, prediction, ...

``meta.json`` is written after the tensors, so a step whose meta exists is complete. ``worker``
names the replica that recorded the step (hostname-pid by default, ``SIGNWATCH_DEBUGGER_WORKER``
to choose): two replicas of one endpoint never write the same object, as smdebug keeps one event
file per step and worker.

Tensor names follow the module path of the model (``model.named_modules()``):

    image                          the model's input (normalised), shape (1, C, H, W)
    gradient/image                 d(predicted logit) / d(image)
    {path}_output                  a module's output as it left the module, before any in-place op
    gradient/{path}_output         d(predicted logit) / d(that output)
    {path}_output@{k}              the k-th further call of a module that runs more than once
    {path}.{parameter or buffer}   e.g. layer1.0.bn1.running_mean, fc.bias

Each tensor also answers to its smdebug name (:func:`smdebug_name`, ``{Root}`` the model's class
name, e.g. ResNet): ``image`` is ``{Root}_input_0``, ``{path}_output@{k}`` is ``{path}_output_{k}``,
``{path}.{p}`` is ``{Root}_{path}.{p}``, gradients keep the ``gradient/`` prefix.
"""

from __future__ import annotations

import os
import re
import socket

INPUT_NAME = "image"
GRADIENT_PREFIX = "gradient/"
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
STEP_DIGITS = 12
FORMAT_VERSION = 2
MAX_WORKER_LENGTH = 100

_STEP_KEY = re.compile(r"(?:^|/)steps/(\d+)/([^/]+)/" + re.escape(META_FILE) + r"$")
_OUTPUT = re.compile(r"(.+)_output(?:@(\d+))?")
# smdebug splits event file names at the last "_" and treats "__" specially: keep workers to these.
_WORKER_OK = re.compile(r"[A-Za-z0-9.-]+")


def tensors_prefix(endpoint: str) -> str:
    return f"tensors/{endpoint}"


def check_worker(worker: str) -> str:
    if not isinstance(worker, str) or not _WORKER_OK.fullmatch(worker) or len(worker) > MAX_WORKER_LENGTH:
        raise ValueError(f"worker name must be 1-{MAX_WORKER_LENGTH} of [A-Za-z0-9.-], got {worker!r}")
    return worker


def default_worker() -> str:
    """This process's worker name: hostname-pid, cleaned to what smdebug's file names allow."""
    host = re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname()).strip("-.") or "host"
    return check_worker(f"{host[: MAX_WORKER_LENGTH - 12]}-{os.getpid()}")


def step_dir(prefix: str, step: int, worker: str) -> str:
    base = f"{prefix.rstrip('/')}/" if prefix else ""
    return f"{base}steps/{step:0{STEP_DIGITS}d}/{worker}"


def tensors_key(prefix: str, step: int, worker: str) -> str:
    return f"{step_dir(prefix, step, worker)}/{TENSORS_FILE}"


def meta_key(prefix: str, step: int, worker: str) -> str:
    return f"{step_dir(prefix, step, worker)}/{META_FILE}"


def steps_listing_prefix(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/steps/" if prefix else "steps/"


def step_of_meta_key(key: str) -> tuple[int, str] | None:
    """(step, worker) of a ``.../steps/{step}/{worker}/meta.json`` key, None for any other key."""
    m = _STEP_KEY.search(key)
    return (int(m.group(1)), m.group(2)) if m else None


def output_name(path: str, call: int = 0) -> str:
    return f"{path}_output" if call == 0 else f"{path}_output@{call}"


def gradient_name(name: str) -> str:
    return GRADIENT_PREFIX + name


def smdebug_name(name: str, root: str) -> str:
    """The name smdebug's PyTorch hook gives tensor ``name`` of a model whose class is ``root``."""
    grad = name.startswith(GRADIENT_PREFIX)
    base = name[len(GRADIENT_PREFIX):] if grad else name
    if base == INPUT_NAME:
        alias = f"{root}_input_0"
    elif m := _OUTPUT.fullmatch(base):
        alias = f"{m.group(1)}_output_{m.group(2) or 0}"
    else:  # a parameter or buffer: smdebug prefixes the root module's class name
        alias = f"{root}_{base}"
    return GRADIENT_PREFIX + alias if grad else alias
