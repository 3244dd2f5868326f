"""Where steps live in the object store and how tensors are named.

    tensors/{endpoint}/steps/{step:012d}/tensors.safetensors   every tensor of the step (safetensors)
    tensors/{endpoint}/steps/{step:012d}/meta.json             request id, time, prediction, names, ...

``meta.json`` is written after the tensors, so a step whose meta exists is complete.

Tensor names follow the module path of the model (``model.named_modules()``):

    image                          the model's input (normalised), shape (1, C, H, W)
    gradient/image                 d(predicted logit) / d(image)
    {path}_output                  a module's output as it left the module, before any in-place op
    gradient/{path}_output         d(predicted logit) / d(that output)
    {path}_output@{k}              the k-th further call of a module that runs more than once
    {path}.{parameter or buffer}   e.g. layer1.0.bn1.running_mean, fc.bias
"""

from __future__ import annotations

import re

INPUT_NAME = "image"
GRADIENT_PREFIX = "gradient/"
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
STEP_DIGITS = 12
FORMAT_VERSION = 1

_STEP_KEY = re.compile(r"(?:^|/)steps/(\d+)/" + re.escape(META_FILE) + r"$")


def tensors_prefix(endpoint: str) -> str:
    return f"tensors/{endpoint}"


def step_dir(prefix: str, step: int) -> str:
    base = f"{prefix.rstrip('/')}/" if prefix else ""
    return f"{base}steps/{step:0{STEP_DIGITS}d}"


def tensors_key(prefix: str, step: int) -> str:
    return f"{step_dir(prefix, step)}/{TENSORS_FILE}"


def meta_key(prefix: str, step: int) -> str:
    return f"{step_dir(prefix, step)}/{META_FILE}"


def steps_listing_prefix(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/steps/" if prefix else "steps/"


def step_of_meta_key(key: str) -> int | None:
    """The step number of a ``.../steps/{step}/meta.json`` key, None for any other key."""
    m = _STEP_KEY.search(key)
    return int(m.group(1)) if m else None


def output_name(path: str, call: int = 0) -> str:
    return f"{path}_output" if call == 0 else f"{path}_output@{call}"


def gradient_name(name: str) -> str:
    return GRADIENT_PREFIX + name
