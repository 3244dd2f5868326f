"""The inference core: top-k predictions for a batch, and a micro-batcher for concurrent requests.

Requests arriving within ``max_wait_ms`` of each other share one forward pass (up to
``max_batch_size``); passes run in ``workers`` threads of their own, so the event loop keeps
accepting and, on a CPU, each pass can have a core.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from signwatch.events import Prediction
from signwatch.model import ModelSpec, preprocess


@dataclass(frozen=True)
class Classification:
    """One image's answer: its top-k (best first) and the softmax over every class."""

    predictions: list[Prediction]
    probabilities: np.ndarray  # float32, (num_classes,)


@dataclass
class Classifier:
    model: torch.nn.Module
    spec: ModelSpec
    top_k: int = 5
    device: str = "cpu"
    debugger: object | None = None  # signwatch.debugger.Debugger, switched on at run time
    # The plain forward (signwatch.model.frozen.FrozenForward); None: the eager model. A recorded
    # forward always runs the eager model, whose hooks and gradients the debugger needs.
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        # Plain forwards run side by side (an eval-mode model keeps no state between calls); a
        # recorded one (the debugger's hooks, its backward) runs alone among recorded ones.
        self.lock = threading.Lock()

    def predict(self, requests: list[tuple[np.ndarray, str]]) -> list[list[Prediction]]:
        """Top-k for each (image, request id); the id names the debugger's step for it."""
        return self.top_predictions(self._logits(requests))

    def classify(self, requests: list[tuple[np.ndarray, str]]) -> list[Classification]:
        """``predict`` with each image's full softmax beside its top-k (the V2 protocol answers both)."""
        probs = torch.softmax(self._logits(requests).float(), dim=1)
        rows = probs.detach().cpu().numpy()  # float32 (softmax of .float()); row i: a view for image i
        return [Classification(p, r) for p, r in zip(self._top(probs), rows)]

    def _logits(self, requests: list[tuple[np.ndarray, str]]) -> torch.Tensor:
        batch = preprocess([image for image, _ in requests], self.spec).to(self.device)
        # NHWC: measured 1.28x (batch 1) and 1.32x (batch 64) over NCHW on the 2-core CPU
        # (benchmarks/model.py); the model is converted once in the composition root.
        batch = batch.contiguous(memory_format=torch.channels_last)
        if self.debugger is not None and self.debugger.enabled:
            with self.lock:
                logits = self.debugger.forward(self.model, batch, [rid for _, rid in requests])
        else:
            with torch.inference_mode():
                logits = (self.forward or self.model)(batch)
        return logits

    def top_predictions(self, logits: torch.Tensor) -> list[list[Prediction]]:
        return self._top(torch.softmax(logits.float(), dim=1))

    def _top(self, probs: torch.Tensor) -> list[list[Prediction]]:
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
    """Bounded queue -> batches of up to ``max_batch_size`` -> forwards in ``workers`` threads.

    ``submit`` never waits for room: a full queue raises ``BatcherFull`` at once. A batch is formed
    only when a worker is free: while every worker runs a forward, new requests queue up and form
    the next batch, so under load batches fill without waiting.

    A free worker takes its fair share: it gathers (for ``max_wait_ms`` at most) until its batch
    is as large as the average batch among all workers, counting those running. So a lone request
    goes at once, and 32 clients on two workers make two batches of 16 that run side by side
    rather than one of 32 that leaves a core idle (32 clients on the 2-core CPU: 1.0 core busy and
    305 requests/s when a free worker took all it could, 1.7 cores and 400 requests/s with this rule).
    """

    def __init__(self, predict, max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 512, registry=None, workers: int = 1) -> None:
        self._predict = predict
        self._max_batch = max_batch_size
        self._max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.workers = workers
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._forwards: set[asyncio.Task] = set()
        self._running_items = 0  # images in the forwards now running
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="forward")
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
        if self._forwards:  # the batches already in a worker are answered
            await asyncio.gather(*self._forwards, return_exceptions=True)
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
        free = asyncio.Semaphore(self.workers)
        while True:
            await free.acquire()  # form a batch only for a free worker; until then, requests queue
            try:
                batch = await self._next_batch(loop)
            except BaseException:
                free.release()
                raise
            if not batch:
                free.release()
                continue
            self._running_items += len(batch)  # now, before another free worker weighs its share
            task = loop.create_task(self._forward(loop, batch))
            self._forwards.add(task)
            task.add_done_callback(lambda t: (self._forwards.discard(t), free.release()))

    async def _next_batch(self, loop) -> list:
        batch = [await self._queue.get()]
        deadline = loop.time() + self._max_wait
        while len(batch) < self._fair_share(len(batch)):
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
        return [(item, fut) for item, fut in batch if not fut.done()]  # cancelled: client gone

    def _fair_share(self, gathered: int) -> int:
        """The batch a free worker aims for: the average over workers of what is gathered, queued
        and running, rounded up (at most ``max_batch_size``)."""
        pending = gathered + self._queue.qsize() + self._running_items
        return min(self._max_batch, -(-pending // self.workers))

    async def _forward(self, loop, batch: list) -> None:
        if self.batch_sizes is not None:
            self.batch_sizes.observe(len(batch))
        try:
            results = await loop.run_in_executor(self._executor, self._predict, [item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001 - every waiter must hear about the failure
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            self._running_items -= len(batch)
        for (_, fut), result in zip(batch, results):  # a result may be that one item's exception
            if not fut.done():
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
