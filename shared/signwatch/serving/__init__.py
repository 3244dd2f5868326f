"""Serving: the one inference core every transport calls, and SageMaker's runtime API shapes.

    service = InferenceService(settings, classifier, publisher, registry)  # owns the micro-batcher
    answer = await service.invoke(Invocation(body, content_type, inference_id=..., custom_attributes=...))
    # answer.body: the response bytes; answer.event_ids: one event per image
    service.publish(answer)  # once the answer is sent: its events go to the publisher

Validation, decoding (never on the event loop: in the forward worker with its batch, or for
``.npy`` bodies in a bounded thread pool), prediction (the bounded micro-batcher), the response bytes and the events are built in one place
(``core.py``); an HTTP route only reads the body, calls ``invoke`` and maps ``InvocationError``
to its protocol (``sagemaker.py`` for the runtime API's error shapes).
"""

from signwatch.serving.core import Answer, Invocation, InvocationError, InferenceService

__all__ = ["Answer", "Invocation", "InvocationError", "InferenceService"]
