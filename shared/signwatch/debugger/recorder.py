"""The run-time debugger: records named tensors, gradients included, for sampled requests.

Switched on by ``configure(DebuggerConfig(enabled=True, ...))`` (the inference service exposes it as
``PUT /admin/debugger``). While it is off the classifier never calls it: serving costs nothing. While
it is on, each batch runs one forward with forward hooks on the modules whose names match the include
regex, and one backward of the summed predicted logits; the tensors of every sampled request (a
"step") are handed to a background writer that stores one safetensors file and one ``meta.json`` per
step (layout in :mod:`signwatch.debugger.layout`).

Invariants (checked by tests/unit/test_debugger*.py):
- the returned logits are the model's logits for the batch, as a plain forward returns them;
- hooks are removed after the batch, also when it fails; parameters and ``.grad`` are left alone
  (gradients are taken with ``torch.autograd.grad``);
- a layer output is recorded, and differentiated, as it left the layer: the hook keeps the tensor
  and hands a clone downstream, so torchvision's in-place ReLU and ``out += identity`` change the
  clone only (the same technique as :mod:`signwatch.saliency.fullgrad`);
- recording never fails a request: what could not be recorded is logged and counted.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge
from safetensors.numpy import save as save_safetensors
from torch import nn

from signwatch.saliency.gradients import logits_of
from signwatch.ports.store import ObjectStore

from .config import DebuggerConfig, sampled
from .plan import Plan, bias_layer_info, make_plan
from .layout import (
    FORMAT_VERSION,
    INPUT_NAME,
    check_worker,
    default_worker,
    gradient_name,
    meta_key,
    output_name,
    step_of_meta_key,
    steps_listing_prefix,
    tensors_key,
    tensors_prefix,
)

__all__ = ["Debugger", "bias_layer_info"]

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024


@dataclass
class _Job:
    """One batch's recorded tensors, rows already restricted to the sampled requests."""

    steps: list[tuple[int, str]]  # (step, request id), row j of every batch tensor belongs to steps[j]
    batch_tensors: dict[str, torch.Tensor]  # name -> (n, ...)
    params: dict[str, torch.Tensor]
    predicted: list[int]
    logits: torch.Tensor  # (n, num_classes)
    config: DebuggerConfig
    batch_size: int
    rows: list[int]  # the requests' rows in the served batch
    plan: Plan
    time: str
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.nbytes = sum(t.numel() * t.element_size() for t in self.batch_tensors.values()) + sum(
            t.numel() * t.element_size() for t in self.params.values()
        )


class Debugger:
    """Run-time tensor recorder of one endpoint, as one worker (replica) of it.

    ``store``: where steps go, under ``tensors/{endpoint}/steps/{step}/{worker}/``. ``worker``: this
    replica's name (default hostname-pid), so that replicas recording the same endpoint never write
    the same step object. ``registry``: Prometheus registry for
    ``signwatch_debugger_steps_total{outcome}`` (recorded, dropped, failed), ``signwatch_debugger_enabled``
    and ``signwatch_debugger_pending_bytes``. ``max_pending_bytes`` bounds what waits for the writer;
    a batch that does not fit is dropped and counted, never waited for. ``model``: the served model,
    whose default include regex (its architecture's) an unset regex stands for.
    """

    def __init__(
        self,
        store: ObjectStore,
        endpoint: str,
        registry: CollectorRegistry | None = None,
        *,
        worker: str | None = None,
        config: DebuggerConfig | None = None,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        model: nn.Module | None = None,
    ) -> None:
        self.store = store
        # The served model, where known at construction: ``config`` then shows its default include
        # regex (an unset regex is otherwise resolved at the first recorded batch, per model).
        self.model = model
        self.endpoint = endpoint
        self.prefix = tensors_prefix(endpoint)
        self.worker = check_worker(worker) if worker else default_worker()
        self.max_pending_bytes = max_pending_bytes
        self._config = DebuggerConfig()
        self._lock = threading.Lock()  # config, step numbers
        self._next_step: int | None = None
        self._steps_this_config = 0
        self._plans: weakref.WeakKeyDictionary[nn.Module, dict[str, Plan]] = weakref.WeakKeyDictionary()

        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._busy = False
        self._pending_bytes = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self.counts = {"recorded": 0, "dropped": 0, "failed": 0}

        registry = registry if registry is not None else CollectorRegistry()
        self._steps_metric = Counter(
            "signwatch_debugger_steps_total", "Debugger steps (sampled requests) by outcome",
            ["outcome"], registry=registry,
        )
        for outcome in self.counts:
            self._steps_metric.labels(outcome)
        self._enabled_metric = Gauge(
            "signwatch_debugger_enabled", "1 while the debugger records tensors", registry=registry
        )
        self._pending_metric = Gauge(
            "signwatch_debugger_pending_bytes", "Recorded bytes waiting for the writer", registry=registry
        )
        if config is not None:
            self.configure(config)

    # ----------------------------------------------------------------------------- configuration

    @property
    def config(self) -> DebuggerConfig:
        """The configuration, with the served model's default regex where it leaves it unset."""
        cfg = self._config
        if cfg.include_regex is None and self.model is not None:
            return cfg.resolved(self._plan(self.model, cfg).include_regex)
        return cfg

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    def configure(self, config: DebuggerConfig | dict) -> DebuggerConfig:
        """Replace the configuration; takes effect from the next batch. Returns the new one.

        The first time it is switched on, step numbering resumes after the highest step already in
        the store (any worker's), so that a restarted service continues the numbering; objects are
        keyed by worker as well, so nothing another replica wrote is ever overwritten.
        """
        if not isinstance(config, DebuggerConfig):
            config = DebuggerConfig.model_validate(config)
        with self._lock:
            if config.enabled and self._next_step is None:
                self._next_step = self._first_free_step()
            self._config = config
            self._steps_this_config = 0
        self._enabled_metric.set(1 if config.enabled else 0)
        log.info("debugger %s: %s", "on" if config.enabled else "off", config.model_dump_json())
        return config

    def _first_free_step(self) -> int:
        steps = [k[0] for k in map(step_of_meta_key, self.store.list(steps_listing_prefix(self.prefix)))
                 if k is not None]
        return max(steps) + 1 if steps else 0

    def _reserve(self, wanted: int, cfg: DebuggerConfig) -> list[int]:
        """Step numbers for ``wanted`` requests; fewer once ``max_steps`` is reached (then it switches off)."""
        with self._lock:
            if self._config is not cfg or not cfg.enabled:
                return []  # reconfigured meanwhile: the new configuration applies from the next batch
            n = wanted
            if cfg.max_steps is not None:
                n = max(0, min(n, cfg.max_steps - self._steps_this_config))
            start = self._next_step or 0
            self._next_step = start + n
            self._steps_this_config += n
            if cfg.max_steps is not None and self._steps_this_config >= cfg.max_steps:
                self._config = cfg.model_copy(update={"enabled": False})
                self._enabled_metric.set(0)
                log.info("debugger off: max_steps=%d reached", cfg.max_steps)
        return list(range(start, start + n))

    def status(self) -> dict:
        with self._cond:
            pending, queued = self._pending_bytes, len(self._jobs) + (1 if self._busy else 0)
        return {
            "enabled": self.enabled,
            "next_step": self._next_step,
            "steps_this_config": self._steps_this_config,
            "steps_recorded": self.counts["recorded"],
            "steps_dropped": self.counts["dropped"],
            "steps_failed": self.counts["failed"],
            "pending_batches": queued,
            "pending_bytes": pending,
            "worker": self.worker,
            "location": self.store.uri(self.prefix),
        }

    # ------------------------------------------------------------------------------- recording

    def _plan(self, model: nn.Module, cfg: DebuggerConfig) -> Plan:
        per_model = self._plans.setdefault(model, {})
        plan = per_model.get(cfg.include_regex)  # None: the model's default
        if plan is None:
            plan = per_model[cfg.include_regex] = make_plan(model, cfg)
        return plan

    def forward(self, model: nn.Module, batch: torch.Tensor, request_ids: list[str]) -> torch.Tensor:
        """The model's logits for ``batch``; records the sampled requests' tensors on the way."""
        cfg = self._config
        if len(request_ids) != batch.shape[0]:
            raise ValueError(f"{len(request_ids)} request ids for a batch of {batch.shape[0]}")
        rows = [i for i, rid in enumerate(request_ids) if sampled(str(rid), cfg.sample_rate)] if cfg.enabled else []
        steps = self._reserve(len(rows), cfg) if rows else []
        if not steps:
            return self._plain(model, batch)
        rows = rows[: len(steps)]
        try:
            logits, job = self._record(model, batch, cfg, rows,
                                       [(s, str(request_ids[r])) for s, r in zip(steps, rows)])
        except Exception:  # noqa: BLE001 - a recording failure must not fail the request
            self._count("failed", len(steps))
            log.exception("debugger: recording steps %d..%d failed; served without recording", steps[0], steps[-1])
            return self._plain(model, batch)
        self._enqueue(job)
        return logits

    @staticmethod
    def _plain(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return logits_of(model(batch))

    def _record(self, model: nn.Module, batch: torch.Tensor, cfg: DebuggerConfig,
                rows: list[int], steps: list[tuple[int, str]]) -> tuple[torch.Tensor, _Job]:
        plan = self._plan(model, cfg)
        cfg = cfg.resolved(plan.include_regex)  # what the step's meta names as its regex

        def inc(name: str) -> bool:
            return plan.includes(cfg, name)
        owner = threading.get_ident()
        captured: list[tuple[str, int, torch.Tensor]] = []
        calls: dict[str, int] = {}

        def hook_for(path: str):
            def hook(_module: nn.Module, _inputs: object, output: object) -> object:
                # Only this call's forward: another thread using the same model is not recorded.
                if threading.get_ident() != owner or not isinstance(output, torch.Tensor):
                    return None
                k = calls.get(path, 0)
                calls[path] = k + 1
                captured.append((path, k, output))
                # Downstream gets the clone; in-place ops there leave the recorded tensor as it was.
                return output.clone()
            return hook

        with torch.inference_mode(False), torch.set_grad_enabled(plan.any_gradient):
            # A clone turns an inference-mode tensor into one autograd accepts; the caller's is untouched.
            x = batch.detach().clone() if batch.is_inference() else batch.detach()
            if plan.any_gradient:
                x.requires_grad_(True)  # x is a new tensor object: the caller's batch is not marked
            handles = []
            try:
                for path, module in plan.modules:
                    handles.append(module.register_forward_hook(hook_for(path)))
                logits = logits_of(model(x))
            finally:
                for handle in handles:
                    handle.remove()
            predicted = logits.detach().argmax(dim=1)

            grads: dict[str, torch.Tensor] = {}
            if plan.any_gradient and logits.requires_grad:
                targets, names = [], []
                if plan.input_gradient:
                    targets.append(x)
                    names.append(gradient_name(INPUT_NAME))
                for path, k, z in captured:
                    name = gradient_name(output_name(path, k))
                    if z.requires_grad and inc(name):
                        targets.append(z)
                        names.append(name)
                if targets:
                    # One backward for the batch: samples are independent in eval mode, so the gradient
                    # of the summed predicted logits is each sample's own. autograd.grad, not backward():
                    # nothing lands in a parameter's .grad.
                    score = logits.gather(1, predicted[:, None]).sum()
                    values = torch.autograd.grad(score, targets, allow_unused=True, materialize_grads=True)
                    grads = dict(zip(names, values))

        logits = logits.detach()
        batch_tensors: dict[str, torch.Tensor] = {}
        if plan.input_value:
            batch_tensors[INPUT_NAME] = x.detach()
        for path, k, z in captured:
            name = output_name(path, k)
            if inc(name) and z.dim() >= 1 and z.shape[0] == batch.shape[0]:
                batch_tensors[name] = z.detach()
        for name, g in grads.items():
            if g.dim() >= 1 and g.shape[0] == batch.shape[0]:
                batch_tensors[name] = g.detach()
        if len(rows) < batch.shape[0]:  # keep only the sampled rows
            index = torch.tensor(rows, device=logits.device)
            batch_tensors = {n: t.index_select(0, index.to(t.device)) for n, t in batch_tensors.items()}
            job_logits, job_pred = logits.index_select(0, index), predicted.index_select(0, index)
        else:
            job_logits, job_pred = logits, predicted
        # Parameters do not change while serving, but a snapshot keeps each step true to its batch.
        params = {name: t.detach().clone() for name, t in plan.params}
        job = _Job(
            steps=steps, batch_tensors=batch_tensors, params=params, predicted=job_pred.tolist(),
            logits=job_logits, config=cfg, batch_size=int(batch.shape[0]), rows=rows, plan=plan,
            time=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        )
        return logits, job

    # --------------------------------------------------------------------------------- writing

    def _count(self, outcome: str, n: int = 1) -> None:
        if n:
            self.counts[outcome] += n
            self._steps_metric.labels(outcome).inc(n)

    def _enqueue(self, job: _Job) -> None:
        with self._cond:
            busy = bool(self._jobs) or self._busy
            if self._closed or (busy and self._pending_bytes + job.nbytes > self.max_pending_bytes):
                dropped = True
            else:
                dropped = False
                self._jobs.append(job)
                self._pending_bytes += job.nbytes
                self._pending_metric.set(self._pending_bytes)
                self._ensure_writer()
                self._cond.notify_all()
        if dropped:
            self._count("dropped", len(job.steps))
            log.warning("debugger: writer behind (%d bytes pending): dropped steps %s",
                        self._pending_bytes, [s for s, _ in job.steps])

    def _ensure_writer(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name=f"debugger-writer-{self.endpoint}", daemon=True)
        self._thread.start()
        ref = weakref.ref(self)

        def flush_at_exit() -> None:
            debugger = ref()
            if debugger is not None:
                debugger.drain(5.0)

        atexit.register(flush_at_exit)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
                self._busy = True
            try:
                self._write(job)
            finally:
                with self._cond:
                    self._busy = False
                    self._pending_bytes -= job.nbytes
                    self._pending_metric.set(self._pending_bytes)
                    self._cond.notify_all()

    def _write(self, job: _Job) -> None:
        def host(t: torch.Tensor) -> torch.Tensor:  # numpy has no bfloat16: widen it
            return t.cpu().float() if t.dtype == torch.bfloat16 else t.cpu()

        # np.require, not ascontiguousarray: that one turns 0-d buffers (num_batches_tracked) into shape (1,).
        params = {n: np.require(host(t).numpy(), requirements='C') for n, t in job.params.items()}
        batch = {n: host(t) for n, t in job.batch_tensors.items()}
        logits = job.logits.cpu()
        for j, (step, request_id) in enumerate(job.steps):
            try:
                arrays = {n: np.ascontiguousarray(t[j : j + 1].numpy()) for n, t in batch.items()}
                arrays.update(params)
                blob = save_safetensors(arrays, metadata={
                    "format": "signwatch-debugger", "step": str(step), "worker": self.worker,
                    "request_id": request_id,
                })
                row = logits[j]
                meta = {
                    "format_version": FORMAT_VERSION,
                    "step": step,
                    "request_id": request_id,
                    "time": job.time,
                    "endpoint": self.endpoint,
                    "worker": self.worker,
                    "model_class": job.plan.root,
                    "mode": "PREDICT",
                    "include_regex": job.config.include_regex,
                    "sample_rate": job.config.sample_rate,
                    "batch_size": job.batch_size,
                    "batch_index": job.rows[j],
                    "predicted_class": job.predicted[j],
                    "logit": float(row[job.predicted[j]]),
                    "logits": [float(v) for v in row.tolist()],
                    "eps": job.plan.eps,
                    "bias_layers": job.plan.bias_layers,
                    "tensors": {n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in sorted(arrays.items())},
                }
                self.store.put(tensors_key(self.prefix, step, self.worker), blob, "application/octet-stream")
                # meta last: a step whose meta.json exists is complete.
                self.store.put(meta_key(self.prefix, step, self.worker), json.dumps(meta).encode(),
                               "application/json")
            except Exception:  # noqa: BLE001 - counted and logged, the writer keeps going
                self._count("failed")
                log.exception("debugger: step %d (request %s) not stored", step, request_id)
            else:
                self._count("recorded")

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every recorded step was stored (or failed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._jobs and not self._busy, timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Store what is pending, then stop the writer. Later batches are counted as dropped."""
        self.drain(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
