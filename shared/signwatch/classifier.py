"""The inference core: top-k predictions for a batch, and a micro-batcher for concurrent requests.

Requests arriving within ``max_wait_ms`` of each other share one forward pass (up to
``max_batch_size``); the pass runs in a worker thread so the event loop keeps accepting.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from signwatch.events import Prediction
from signwatch.model import ModelSpec, preprocess


@dataclass
class Classifier:
    model: torch.nn.Module
    spec: ModelSpec
    top_k: int = 5
    device: str = "cpu"
    debugger: object | None = None  # signwatch.debugger.Debugger, switched on at run time

    def __post_init__(self) -> None:
        # One forward at a time: the debugger adds and removes hooks around a batch.
        self.lock = threading.Lock()

    def predict(self, requests: list[tuple[np.ndarray, str]]) -> list[list[Prediction]]:
        """Top-k for each (image, request id); the id names the debugger's step for it."""
        batch = preprocess([image for image, _ in requests], self.spec).to(self.device)
        # NHWC: measured 1.28x (batch 1) and 1.32x (batch 64) over NCHW on the 2-core CPU
        # (benchmarks/model.py); the model is converted once in the composition root.
        batch = batch.contiguous(memory_format=torch.channels_last)
        with self.lock:
            if self.debugger is not None and self.debugger.enabled:
                logits = self.debugger.forward(self.model, batch, [rid for _, rid in requests])
            else:
                with torch.inference_mode():
                    logits = self.model(batch)
        return self.top_predictions(logits)

    def top_predictions(self, logits: torch.Tensor) -> list[list[Prediction]]:
        probs = torch.softmax(logits.float(), dim=1)
        values, indices = probs.topk(min(self.top_k, probs.shape[1]), dim=1)
        return [
            [
                Prediction(class_id=int(c), label=self.spec.class_names[int(c)], probability=float(p))
                for p, c in zip(row_p.tolist(), row_c.tolist())
            ]
            for row_p, row_c in zip(values, indices)
        ]


class BatcherFull(RuntimeError):
    """The queue in front of the model is full: answer 429 now rather than wait without bound."""


class BatcherStopped(RuntimeError):
    """The batcher is not running (starting up or shutting down): answer 503."""


class MicroBatcher:
    """Bounded queue -> batches of up to ``max_batch_size`` -> one forward in a worker thread.

    ``submit`` never waits for room: a full queue raises ``BatcherFull`` at once. While a forward
    runs, new requests queue up and form the next batch, so under load batches fill without
    waiting; an idle model waits at most ``max_wait_ms`` for company.
    """

    def __init__(self, predict, max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 512, registry=None) -> None:
        self._predict = predict
        self._max_batch = max_batch_size
        self._max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        # one forward at a time, in a thread of its own (the event loop keeps serving)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self.batch_sizes = None
        if registry is not None:
            from prometheus_client import Gauge, Histogram

            self.batch_sizes = Histogram("signwatch_inference_batch_size", "Images per forward pass",
                                         registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
            Gauge("signwatch_inference_queue_depth", "Images waiting for the model",
                  registry=registry).set_function(lambda: self.depth)

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def room(self) -> int:
        return self.max_queue - self.depth

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._task = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=False)

    def enqueue(self, item) -> asyncio.Future:
        """Queue one item; raises BatcherFull / BatcherStopped at once. Await the future."""
        if self._queue is None or not self.running:
            raise BatcherStopped("the model is not serving yet")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise BatcherFull(f"{self.max_queue} images are already waiting for the model") from None
        return future

    async def submit(self, item):
        return await self.enqueue(item)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self._max_wait
            while len(batch) < self._max_batch:
                try:  # whatever queued up during the last forward joins without waiting
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            batch = [(item, fut) for item, fut in batch if not fut.done()]  # cancelled: client gone
            if not batch:
                continue
            if self.batch_sizes is not None:
                self.batch_sizes.observe(len(batch))
            items = [item for item, _ in batch]
            try:
                results = await loop.run_in_executor(self._executor, self._predict, items)
            except Exception as exc:  # noqa: BLE001 - every waiter must hear about the failure
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
