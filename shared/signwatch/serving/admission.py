"""Admission of request bodies: what one slow client may hold, so that it cannot starve the rest.

Measured before (issue 16): 32 connections that declared a 6 MB body and trickled it reserved
their declared lengths, the whole 192 MiB in-flight budget, and for 10 s every other client got
429 (91 of 240 requests). So:

- **bytes in flight count what arrived**, not the Content-Length a client declares: a trickling
  body holds only the bytes it sent. The budget still bounds the memory bodies take (a chunk
  that would exceed it refuses its request with 429), and a body still cannot exceed
  ``max_body_bytes`` (413).
- **slow uploads have their own few slots**: a body still arriving ``slow_after_s`` after its read
  began takes one of ``max_slow`` slots for the rest of its read; with none free it is cut off at
  once (408). A fast body (nearly every request: an image arrives in one or two reads) never
  takes a slot, so slow ones never make it wait.
- every body keeps its deadline (``body_timeout_s`` from the start of its read, in the transport):
  then it is cut off with 408 and what it held is released.

Everything here runs on the event loop: no lock.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

from signwatch.serving.core import ServingError


class BodyBudget:
    """The bytes of request bodies held at once, and the slow uploads read at once."""

    def __init__(self, max_bytes: int, max_slow: int, registry: CollectorRegistry | None = None) -> None:
        self.max_bytes, self.max_slow = max_bytes, max_slow
        self.held = 0  # bytes of bodies arrived and not yet released
        self.slow = 0  # slow uploads holding a slot
        if registry is not None:
            Gauge("signwatch_inference_inflight_bytes", "Bytes of request bodies held (arrived, not yet answered)",
                  registry=registry).set_function(lambda: self.held)
            Gauge("signwatch_inference_slow_uploads", "Bodies still arriving after SIGNWATCH_SLOW_BODY_AFTER_S",
                  registry=registry).set_function(lambda: self.slow)

    def ticket(self) -> BodyTicket:
        return BodyTicket(self)


@dataclass(eq=False)
class BodyTicket:
    """One request's share of the budget; ``release`` it once answered (idempotent)."""

    budget: BodyBudget
    held: int = 0
    slow: bool = False

    def hold(self, size: int) -> None:
        """Count ``size`` more bytes of this body; raises ServingError (busy) over the budget."""
        budget = self.budget
        if budget.held + size > budget.max_bytes:
            raise ServingError("busy", "busy", "too many request bytes in flight; retry")
        budget.held += size
        self.held += size

    def become_slow(self, waited_s: float) -> None:
        """This body is still arriving: take a slow-upload slot, or raise ServingError (408)."""
        budget = self.budget
        if budget.slow >= budget.max_slow:
            raise ServingError("input", "body_timeout",
                               f"the body did not arrive within {waited_s:g} s and {budget.max_slow} slow "
                               f"uploads are already being read ({self.held} bytes received)")
        budget.slow += 1
        self.slow = True

    def release(self) -> None:
        budget = self.budget
        budget.held -= self.held
        self.held = 0
        if self.slow:
            budget.slow -= 1
            self.slow = False
