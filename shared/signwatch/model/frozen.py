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

The eager model stays the one the debugger records and FullGrad explains: both need its hooks
and gradients. Both graphs are checked against it on a probe batch when built.
"""

from __future__ import annotations

import warnings

import torch

from signwatch.model.core import ModelSpec

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
            self.single = torch.jit.freeze(traced)
            self.batched = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        with torch.inference_mode():
            for batch in (probe[:1], probe):
                expected, got = model(batch), self(batch)
                if not torch.allclose(expected, got, atol=TOLERANCE, rtol=TOLERANCE):
                    raise RuntimeError(
                        f"frozen forward differs from the model by {(expected - got).abs().max().item():.2e}")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return (self.single if batch.shape[0] == 1 else self.batched)(batch)
