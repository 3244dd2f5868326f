"""The served forward pass: the model as TorchScript graphs frozen for inference.

Eager PyTorch goes back to Python between every layer, and each time a forward thread must take
the GIL again; while the event loop holds it (parsing requests, building capture events), the
forward waits and its core idles. A frozen graph runs the whole forward in C++ with the GIL
released, with batch norm folded into the convolutions and oneDNN's fused kernels. Measured on
the 2-core Xeon (two threads, one PyTorch thread each, batch 16): eager 525 images/s, 480 with a
thread taking the GIL for 50 us every 0.5 ms (-9%); frozen 784 and 746 (-5%). ``torch.compile``
(inductor, freezing on) gave 669 and 630 after 23 s of compiling per batch shape, so TorchScript
stays here, though PyTorch marks it deprecated.

``optimize_for_inference`` (oneDNN layouts) is slower for a lone image: on one thread 11.8 ms
against 6.3 ms for the graph only frozen, while it wins from two images on (12.8 against 14.7 ms;
at 32: 69 against 104 ms). A batch of one therefore takes the plainly frozen graph.

Per architecture (224 px, one thread, images/s, eager -> plainly frozen; the oneDNN graph at 16):

    family           batch 1          batch 16         batch 16, oneDNN graph
    resnet18          19.1 ->  19.9    17.7 ->  20.7     19.5
    resnet50           7.4 ->   8.0     6.5 ->   7.8      7.8
    vgg11_bn           5.0 ->   5.1     4.1 ->   4.8      4.9
    regnet_x_400mf    46.1 ->  58.7    70.7 ->  78.2     85.6
    regnet_y_400mf    41.8 ->  58.7    47.5 ->  58.3     51.7
    densenet121        8.8 ->  11.0     8.5 ->   9.9      7.0
    mobilenet_v3_s   101.9 -> 202.7   232.7 -> 304.4    303.6
    mobilenet_v3_l    53.5 ->  83.2    60.4 ->  82.6     89.0
    efficientnet_b0   30.8 ->  37.9    28.5 ->  40.2     22.9

The frozen graph never lost to eager (1.02-1.99x), before counting the GIL it releases, so every
family is served frozen. oneDNN's graph lost to eager for DenseNet (concatenations between oneDNN
layouts) and EfficientNet (depthwise convolutions with SiLU): those families take the plainly
frozen graph for batches too (``Architecture.onednn_batches``). A graph that cannot be traced or
frozen, or differs from the model, is not served: ``served_forward`` logs why and serves eager.

The eager model stays the one the debugger records and FullGrad explains: both need its hooks
and gradients. Both graphs are checked against it on a probe batch when built.
"""

from __future__ import annotations

import logging
import warnings

import torch

from signwatch.model.core import ModelSpec

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # on logits; folding batch norm moves them by about 5e-6


class FrozenForward:
    """``forward(batch) -> logits`` as the eager model's, from frozen graphs (thread-safe)."""

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, device: str | torch.device = "cpu") -> None:
        model = model.eval()
        size = spec.input_size
        probe = torch.rand(3, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), warnings.catch_warnings():  # at start-up, before any request thread
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
            traced = torch.jit.trace(model, probe)
            self.single = self.batched = torch.jit.freeze(traced)
            if spec.arch.onednn_batches:
                try:
                    self.batched = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
                    self.batched(probe)
                except RuntimeError as exc:  # e.g. VGG at 64 px: oneDNN pools 2x2 to 7x7 only by divisors
                    log.info("forward: oneDNN graph of %s refused (%s); batches take the frozen graph",
                             spec.architecture, str(exc).strip().splitlines()[-1])
                    self.batched = self.single
        with torch.inference_mode():
            for batch in (probe[:1], probe):
                expected, got = model(batch), self(batch)
                if not torch.allclose(expected, got, atol=TOLERANCE, rtol=TOLERANCE):
                    raise RuntimeError(
                        f"frozen forward differs from the model by {(expected - got).abs().max().item():.2e}")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return (self.single if batch.shape[0] == 1 else self.batched)(batch)


def served_forward(model: torch.nn.Module, spec: ModelSpec, graph: str = "frozen") -> FrozenForward | None:
    """The plain forward to serve (``SIGNWATCH_FORWARD_GRAPH``): the frozen graphs, or None for the
    eager model, when ``graph`` is "eager" or the model cannot be traced, frozen or matched (logged)."""
    if graph == "eager":
        return None
    try:
        return FrozenForward(model, spec)
    except Exception as exc:  # noqa: BLE001 - tracing fails in many ways; eager always serves
        log.warning("forward: %s served eager, its frozen graph is not usable: %s: %s",
                    spec.architecture, type(exc).__name__, str(exc).strip().splitlines()[-1] if str(exc) else "")
        return None
