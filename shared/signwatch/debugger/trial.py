"""Reading recorded steps back, in the spirit of smdebug's trials.

    from signwatch.debugger import create_trial
    trial = create_trial("s3://signwatch/tensors/signwatch?endpoint=http://127.0.0.1:8333")
    trial.steps()                                   # [0, 1, 2, ...]
    trial.tensor_names(regex="bn1")                 # names recorded, re.search as smdebug
    trial.tensor("layer1.0.bn1.running_mean").value(0)   # numpy array
    trial.step_meta(0)["predicted_class"]

Locations:
- ``file:///abs/path/tensors/{endpoint}`` or a plain folder path;
- ``s3://bucket/tensors/{endpoint}[?endpoint=http://host:port&region=...]``: the S3 endpoint comes
  from the query or ``SIGNWATCH_S3_ENDPOINT`` (AWS when neither is set); credentials from
  ``SIGNWATCH_S3_ACCESS_KEY``/``SIGNWATCH_S3_SECRET_KEY``, else boto3's own chain (``AWS_*``
  variables, profile, instance role); region from the query or ``SIGNWATCH_S3_REGION``;
- an open :class:`ObjectStore` and the key prefix: ``create_trial("tensors/signwatch", store=store)``.

Tensors come back as numpy arrays. Batch tensors keep a batch dimension of 1 (``image`` is
(1, C, H, W)); parameters and buffers have their own shape.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
from safetensors.numpy import load as load_safetensors

from signwatch.ports.store import ObjectNotFound, ObjectStore

from .layout import meta_key, step_of_meta_key, steps_listing_prefix, tensors_key

__all__ = ["Trial", "TrialTensor", "TensorUnavailable", "StepUnavailable", "create_trial"]


class StepUnavailable(KeyError):
    pass


class TensorUnavailable(KeyError):
    pass


class TrialTensor:
    def __init__(self, trial: Trial, name: str) -> None:
        self.trial = trial
        self.name = name

    def steps(self) -> list[int]:
        """The steps in which this tensor was recorded, sorted."""
        return [s for s in self.trial.steps() if self.name in self.trial.step_meta(s)["tensors"]]

    def value(self, step_num: int, mode: object = None) -> np.ndarray:  # noqa: ARG002 - smdebug's signature
        """The tensor at ``step_num`` (``mode`` is accepted for smdebug compatibility and ignored)."""
        tensors = self.trial.step_tensors(step_num)
        if self.name not in tensors:
            raise TensorUnavailable(f"tensor {self.name!r} was not recorded at step {step_num}")
        return tensors[self.name].copy()  # the caller's to change; the cached step stays intact

    def __repr__(self) -> str:
        return f"TrialTensor({self.name!r})"


class Trial:
    """Steps recorded under ``prefix`` in ``store``. Steps written later show up on the next call."""

    def __init__(self, store: ObjectStore, prefix: str = "", cache_steps: int = 8) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self._cache_steps = cache_steps
        self._meta: dict[int, dict] = {}  # a step's meta never changes once written
        self._tensors: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def uri(self) -> str:
        if self.prefix:
            return self.store.uri(self.prefix)
        root = getattr(self.store, "root", None)  # FileStore
        return Path(root).as_uri() if root is not None else self.store.uri("")

    def steps(self, mode: object = None) -> list[int]:  # noqa: ARG002 - smdebug's signature
        """Complete steps (those whose meta.json exists), sorted."""
        keys = self.store.list(steps_listing_prefix(self.prefix))
        return sorted({s for s in map(step_of_meta_key, keys) if s is not None})

    def step_meta(self, step: int) -> dict:
        meta = self._meta.get(step)
        if meta is None:
            try:
                meta = json.loads(self.store.get(meta_key(self.prefix, step)))
            except ObjectNotFound as exc:
                raise StepUnavailable(f"step {step} not found under {self.uri}") from exc
            self._meta[step] = meta
        return meta

    def step_tensors(self, step: int) -> dict[str, np.ndarray]:
        """Every tensor recorded at ``step``, by name: cached, read-only arrays (``value()`` copies)."""
        with self._lock:
            if step in self._tensors:
                self._tensors.move_to_end(step)
                return self._tensors[step]
        try:
            blob = self.store.get(tensors_key(self.prefix, step))
        except ObjectNotFound as exc:
            raise StepUnavailable(f"step {step} not found under {self.uri}") from exc
        tensors = load_safetensors(blob)
        for array in tensors.values():
            array.setflags(write=False)
        with self._lock:
            self._tensors[step] = tensors
            while len(self._tensors) > self._cache_steps:
                self._tensors.popitem(last=False)
        return tensors

    def tensor_names(self, regex: str | None = None, step: int | None = None, mode: object = None) -> list[str]:  # noqa: ARG002
        """Names recorded at ``step`` (all steps when None) that ``regex`` matches (re.search), sorted."""
        steps = [step] if step is not None else self.steps()
        names: set[str] = set()
        for s in steps:
            names.update(self.step_meta(s)["tensors"])
        if regex is not None:
            pattern = re.compile(regex)
            names = {n for n in names if pattern.search(n)}
        return sorted(names)

    def has_tensor(self, name: str) -> bool:
        return name in self.tensor_names()

    def tensor(self, name: str) -> TrialTensor:
        if not self.has_tensor(name):
            raise TensorUnavailable(f"tensor {name!r} was not recorded under {self.uri}")
        return TrialTensor(self, name)

    def __repr__(self) -> str:
        return f"Trial({self.uri!r})"


def create_trial(uri: str, store: ObjectStore | None = None) -> Trial:
    """A trial over ``uri`` (see the module docstring), or over prefix ``uri`` of ``store``."""
    if store is not None:
        parsed = urlparse(uri)
        prefix = parsed.path if parsed.scheme in ("s3", "file") else uri
        return Trial(store, prefix.strip("/"))
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        from signwatch.ports.store_s3 import S3Store

        if not parsed.netloc:
            raise ValueError(f"s3 URI needs a bucket: {uri!r}")
        query = parse_qs(parsed.query)
        s3 = S3Store(
            bucket=parsed.netloc,
            endpoint=query.get("endpoint", [os.environ.get("SIGNWATCH_S3_ENDPOINT")])[0] or None,
            access_key=os.environ.get("SIGNWATCH_S3_ACCESS_KEY") or None,
            secret_key=os.environ.get("SIGNWATCH_S3_SECRET_KEY") or None,
            region=query.get("region", [os.environ.get("SIGNWATCH_S3_REGION", "us-east-1")])[0],
            create_bucket=False,
        )
        return Trial(s3, unquote(parsed.path).strip("/"))
    if parsed.scheme == "file":
        path = Path(unquote(parsed.netloc + parsed.path) if parsed.netloc else unquote(parsed.path))
    elif parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = Path(uri)
    else:
        raise ValueError(f"trial URI must be s3://, file:// or a folder path, got {uri!r}")
    if not path.is_dir():
        raise FileNotFoundError(f"no recorded tensors at {path}")
    from signwatch.ports.store_file import FileStore

    return Trial(FileStore(path), "")
