"""Reading recorded steps back, as smdebug's trials do (the reference's analysis code runs unchanged).

    from signwatch.debugger import create_trial, modes
    trial = create_trial("s3://signwatch/tensors/signwatch?endpoint=http://127.0.0.1:8333")
    trial.steps(mode=modes.PREDICT)                 # [0, 1, 2, ...]
    trial.tensor_names(regex=".*bn1")               # re.search, as smdebug
    trial.tensor("ResNet_bn1.bias").value(step_num=0, mode=modes.PREDICT)   # numpy array
    trial.tensor("bn1.bias").value(0)               # the same tensor under signwatch's name
    trial.step_meta(0)["predicted_class"]

Names: every tensor answers to its signwatch name and to its smdebug name (see
:mod:`signwatch.debugger.layout`). ``tensor_names()`` lists signwatch names; with a regex it lists
each tensor under every one of its names that the regex matches, so ``regex="ResNet_input"`` lists
``ResNet_input_0`` and ``gradient/ResNet_input_0``.

Workers: each replica records under its own worker name. ``steps()`` is the union over workers;
where several workers recorded the same step number, ``value(step)`` reads the first worker in
sorted order, as smdebug does, and ``value(step, worker=w)`` a given one (``trial.workers(step)``).

Locations:
- ``file:///abs/path/tensors/{endpoint}`` or a plain folder path;
- ``s3://bucket/tensors/{endpoint}[?endpoint=http://host:port&region=...]``: without options of
  its own, the S3 endpoint and region of the settings' store URL (``SIGNWATCH_STORE_URL``, AWS when
  neither is set); credentials and CA bundle from the settings (``SIGNWATCH_S3_ACCESS_KEY``,
  ``SIGNWATCH_S3_SECRET_KEY``, ``SIGNWATCH_S3_CA_BUNDLE``), else boto3's own chain (``AWS_*``
  variables, profile, instance role). ``create_trial(uri, settings=...)`` takes the settings from
  its caller; without them it reads ``Settings()`` once, as every signwatch command does;
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
from urllib.parse import unquote, urlparse

import numpy as np
from safetensors.numpy import load as load_safetensors

from signwatch.ports.store import ObjectNotFound, ObjectStore

from .layout import meta_key, smdebug_name, step_of_meta_key, steps_listing_prefix, tensors_key
from .modes import mode_name, recorded

__all__ = ["Trial", "TrialTensor", "TensorUnavailable", "StepUnavailable", "create_trial"]


class StepUnavailable(KeyError):
    pass


class TensorUnavailable(KeyError):
    pass


class TrialTensor:
    """One tensor of a trial; ``name`` is the name it was asked by (signwatch's or smdebug's)."""

    def __init__(self, trial: Trial, name: str) -> None:
        self.trial = trial
        self.name = name

    def steps(self, mode: object = None) -> list[int]:
        """The steps in which this tensor was recorded (by any worker), sorted."""
        if not recorded(mode):
            return []
        return [s for s in self.trial.steps() if any(
            self.trial.own_name(self.name, s, w) is not None for w in self.trial.workers(s))]

    def workers(self, step_num: int, mode: object = None) -> list[str]:  # noqa: ARG002 - smdebug's signature
        return [w for w in self.trial.workers(step_num) if self.trial.own_name(self.name, step_num, w) is not None]

    def value(self, step_num: int, mode: object = None, worker: str | None = None) -> np.ndarray:
        """The tensor at ``step_num`` (a copy). ``mode``: smdebug's; every recorded step is PREDICT."""
        if not recorded(mode):
            raise StepUnavailable(f"step {step_num} has no mode {mode_name(mode)}: every recorded step is PREDICT")
        worker = self.trial.resolve_worker(step_num, worker)
        own = self.trial.own_name(self.name, step_num, worker)
        if own is None:
            raise TensorUnavailable(f"tensor {self.name!r} was not recorded at step {step_num} (worker {worker})")
        return self.trial.step_tensors(step_num, worker)[own].copy()  # the cached step stays intact

    def shape(self, step_num: int, mode: object = None, worker: str | None = None) -> tuple[int, ...]:
        worker = self.trial.resolve_worker(step_num, worker)
        own = self.trial.own_name(self.name, step_num, worker)
        if own is None or not recorded(mode):
            raise TensorUnavailable(f"tensor {self.name!r} was not recorded at step {step_num}")
        return tuple(self.trial.step_meta(step_num, worker)["tensors"][own]["shape"])

    def __repr__(self) -> str:
        return f"TrialTensor({self.name!r})"


class Trial:
    """Steps recorded under ``prefix`` in ``store``. Steps written later show up on the next call."""

    def __init__(self, store: ObjectStore, prefix: str = "", cache_steps: int = 8) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self._cache_steps = cache_steps
        self._meta: dict[tuple[int, str], dict] = {}  # a step's meta never changes once written
        self._names: dict[tuple[int, str], dict[str, str]] = {}  # any name -> signwatch name
        self._tensors: OrderedDict[tuple[int, str], dict[str, np.ndarray]] = OrderedDict()
        self._index: dict[int, list[str]] = {}
        self._lock = threading.Lock()

    @property
    def uri(self) -> str:
        if self.prefix:
            return self.store.uri(self.prefix)
        root = getattr(self.store, "root", None)  # FileStore
        return Path(root).as_uri() if root is not None else self.store.uri("")

    def _refresh(self) -> dict[int, list[str]]:
        index: dict[int, set[str]] = {}
        for key in self.store.list(steps_listing_prefix(self.prefix)):
            found = step_of_meta_key(key)
            if found is not None:
                index.setdefault(found[0], set()).add(found[1])
        self._index = {s: sorted(w) for s, w in sorted(index.items())}
        return self._index

    def steps(self, mode: object = None, show_incomplete_steps: bool = False) -> list[int]:  # noqa: ARG002
        """Complete steps (those whose meta.json exists) of any worker, sorted; [] for TRAIN/EVAL."""
        return list(self._refresh()) if recorded(mode) else []

    def workers(self, step: int | None = None) -> list[str]:
        """The workers (replicas) that recorded ``step``, or any step when None, sorted."""
        index = self._index if step is not None and step in self._index else self._refresh()
        if step is None:
            return sorted({w for ws in index.values() for w in ws})
        return list(index.get(step, []))

    def resolve_worker(self, step: int, worker: str | None = None) -> str:
        workers = self.workers(step)
        if not workers:
            raise StepUnavailable(f"step {step} not found under {self.uri}")
        if worker is None:
            return workers[0]  # smdebug's choice: the first worker in sorted order
        if worker not in workers:
            raise StepUnavailable(f"step {step} was not recorded by worker {worker!r} (only {workers})")
        return worker

    def step_meta(self, step: int, worker: str | None = None) -> dict:
        worker = self.resolve_worker(step, worker)
        meta = self._meta.get((step, worker))
        if meta is None:
            try:
                meta = json.loads(self.store.get(meta_key(self.prefix, step, worker)))
            except ObjectNotFound as exc:
                raise StepUnavailable(f"step {step} ({worker}) not found under {self.uri}") from exc
            self._meta[(step, worker)] = meta
        return meta

    def _name_map(self, step: int, worker: str) -> dict[str, str]:
        names = self._names.get((step, worker))
        if names is None:
            meta = self.step_meta(step, worker)
            own = list(meta["tensors"])
            root = meta.get("model_class")
            names = {smdebug_name(n, root): n for n in own} if root else {}
            names.update({n: n for n in own})
            self._names[(step, worker)] = names
        return names

    def own_name(self, name: str, step: int, worker: str) -> str | None:
        """The signwatch name of tensor ``name`` (either scheme) at ``step`` of ``worker``, None if absent."""
        return self._name_map(step, worker).get(name)

    def step_tensors(self, step: int, worker: str | None = None) -> dict[str, np.ndarray]:
        """Every tensor recorded at ``step``, by signwatch name: cached, read-only arrays (``value()`` copies)."""
        worker = self.resolve_worker(step, worker)
        key = (step, worker)
        with self._lock:
            if key in self._tensors:
                self._tensors.move_to_end(key)
                return self._tensors[key]
        try:
            blob = self.store.get(tensors_key(self.prefix, step, worker))
        except ObjectNotFound as exc:
            raise StepUnavailable(f"step {step} ({worker}) not found under {self.uri}") from exc
        tensors = load_safetensors(blob)
        for array in tensors.values():
            array.setflags(write=False)
        with self._lock:
            self._tensors[key] = tensors
            while len(self._tensors) > self._cache_steps:
                self._tensors.popitem(last=False)
        return tensors

    def tensor_names(self, regex: str | list[str] | None = None, step: int | None = None, mode: object = None,
                     *, collection: object = None, show_prefixed_tensors: bool = False) -> list[str]:  # noqa: ARG002
        """Names recorded at ``step`` (all steps when None), sorted.

        Without ``regex``: signwatch names. With one (or a list, as smdebug): every name of every
        tensor, in either scheme, that a regex matches anywhere (re.search).
        """
        if collection is not None:
            raise ValueError("collections are not kept: pass regex= (e.g. the include regex) instead")
        if not recorded(mode):
            return []
        steps = [step] if step is not None else self.steps()
        maps = [self._name_map(s, w) for s in steps for w in self.workers(s)]
        if regex is None:
            return sorted({own for m in maps for own in m.values()})
        patterns = [re.compile(r) for r in ([regex] if isinstance(regex, str) else regex)]
        return sorted({n for m in maps for n in m if any(p.search(n) for p in patterns)})

    def has_tensor(self, name: str) -> bool:
        # The known steps first: listing the store for every tensor() call costs a round trip each.
        for index in (self._index, self._refresh()):
            if any(name in self._name_map(s, w) for s, ws in index.items() for w in ws):
                return True
        return False

    def tensor(self, name: str) -> TrialTensor:
        if not self.has_tensor(name):
            raise TensorUnavailable(f"tensor {name!r} was not recorded under {self.uri}")
        return TrialTensor(self, name)

    def __repr__(self) -> str:
        return f"Trial({self.uri!r})"


def open_location(uri: str, *, must_exist: bool = True, settings=None) -> tuple[ObjectStore, str]:
    """(store, key prefix) for ``s3://bucket/prefix[?endpoint=..&region=..]``, ``file://`` or a folder;
    S3 credentials and the default endpoint from ``settings`` (see the module docstring)."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        from signwatch.ports import parse_url, s3_location
        from signwatch.ports.security import Credentials
        from signwatch.ports.store_s3 import open_url

        if not parsed.netloc:
            raise ValueError(f"s3 URI needs a bucket: {uri!r}")
        settings = settings if settings is not None else _settings()
        store_url, prefix = s3_location(uri, settings.store_url)
        _, location = parse_url("store", store_url)
        s3 = open_url(location, Credentials.from_settings(settings), create_bucket=False)
        return s3, prefix.strip("/")
    if parsed.scheme == "file":
        path = Path(unquote(parsed.netloc + parsed.path) if parsed.netloc else unquote(parsed.path))
    elif parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = Path(uri)
    else:
        raise ValueError(f"location must be s3://, file:// or a folder path, got {uri!r}")
    if must_exist and not path.is_dir():
        raise FileNotFoundError(f"no recorded tensors at {path}")
    from signwatch.ports.store_file import FileStore

    return FileStore(path), ""


def _settings():
    """The SIGNWATCH_ settings, for a caller that passed none (a notebook's ``create_trial(uri)``,
    as smdebug's reads the AWS_* environment): built here, once, as a command line builds them."""
    from signwatch.config import settings_for_command

    return settings_for_command()


def create_trial(uri: str, store: ObjectStore | None = None, *, settings=None) -> Trial:
    """A trial over ``uri`` (see the module docstring), or over prefix ``uri`` of ``store``;
    ``settings``: the S3 credentials, CA bundle and default endpoint (``Settings()`` when None)."""
    if store is not None:
        parsed = urlparse(uri)
        prefix = parsed.path if parsed.scheme in ("s3", "file") else uri
        return Trial(store, prefix.strip("/"))
    return Trial(*open_location(uri, settings=settings))
