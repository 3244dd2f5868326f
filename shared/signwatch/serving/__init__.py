"""Serving: one inference core, and a thin module per protocol in front of it.

    service = InferenceService(settings, classifier, publisher, registry)  # owns the micro-batcher
    result = await service.infer(InferenceRequest([ImageInput.encoded(png, "png")], inference_id=...))
    # result.predictions / .probabilities / .outputs / .event_ids: one of each per image
    service.publish(result)  # once the answer is sent: its events go to the publisher

The core (``core.py``) takes images (decoded arrays, or PNG/JPEG bytes the forward worker decodes
with its batch) and request metadata, bounds admission, predicts (the bounded micro-batcher) and
builds one event per image; its errors (``ServingError``) carry a kind and a reason, no HTTP
status. Each protocol parses its request into images, shapes the result into its response and
maps the errors to its statuses: ``container.py`` (SageMaker's container contract,
``/invocations``), ``sagemaker.py`` (SageMaker's runtime API, on top of the container's parsing),
``v2.py`` (the Open Inference Protocol, ``/v2/...``). A transport only reads the body within the
limits and dispatches (``services/inference/invocations.py``).
"""

from signwatch.serving.core import ImageInput, InferenceRequest, InferenceResult, InferenceService, ServingError

__all__ = ["ImageInput", "InferenceRequest", "InferenceResult", "InferenceService", "ServingError"]
