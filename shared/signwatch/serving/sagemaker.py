"""SageMaker's runtime API (``InvokeEndpoint``), as botocore's ``sagemaker-runtime`` client speaks it.

The request: ``POST /endpoints/{EndpointName}/invocations`` with ``Content-Type``, ``Accept`` and
the optional ``X-Amzn-SageMaker-{Custom-Attributes,Inference-Id,Target-Variant,...}`` headers.
The answer: the body, ``Content-Type``, ``X-Amzn-Invoked-Production-Variant`` and the custom
attributes echoed. Errors follow the rest-json protocol botocore parses: the error code in the
``x-amzn-ErrorType`` header, a top-level ``message``, and the shape's members (ModelError's
``OriginalStatusCode`` / ``OriginalMessage``) at the top level of the JSON body.

The body is what the container contract takes, parsed and answered by ``container.py``; this
module adds the runtime API's checks of the call and its error shapes.
"""

from __future__ import annotations

from signwatch.serving import container
from signwatch.serving.core import ServingError

CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
INFERENCE_ID = "x-amzn-sagemaker-inference-id"
TARGET_VARIANT = "x-amzn-sagemaker-target-variant"
INVOKED_VARIANT = "X-Amzn-Invoked-Production-Variant"
# Headers of features this endpoint does not have: a call that needs them is a ValidationError.
UNSUPPORTED = {
    "x-amzn-sagemaker-target-model": "TargetModel (multi-model endpoints)",
    "x-amzn-sagemaker-target-container-hostname": "TargetContainerHostname (multi-container endpoints)",
    "x-amzn-sagemaker-inference-component": "InferenceComponentName",
    "x-amzn-sagemaker-session-id": "SessionId (stateful sessions)",
}
ACCEPTED = ("application/json", "*/*", "application/*")

# kind of ServingError -> (error code, HTTP status)
ERRORS = {
    "validation": ("ValidationError", 400),
    "input": ("ModelError", 424),  # the container refused the input; its status travels inside
    "busy": ("ModelNotReadyException", 429),
    "unavailable": ("ServiceUnavailable", 503),
}


def error_response(exc: ServingError) -> tuple[int, dict[str, str], dict]:
    """(status, headers, JSON body) of the runtime API's answer to a failed invocation."""
    code, status = ERRORS.get(exc.kind, ("InternalFailure", 500))
    body: dict = {"message": exc.message, "ErrorCode": code}
    if code == "ModelError":
        # the status the container contract answers for this refusal
        body.update(OriginalStatusCode=container.status_of(exc), OriginalMessage=exc.message)
    return status, {"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.sagemaker/"}, body


def validation_error(message: str) -> ServingError:
    return ServingError("validation", "validation", message)


def check_call(endpoint_name: str, headers, endpoint: str, variant: str) -> None:
    """Raise a ValidationError for a call this endpoint cannot serve as asked."""
    if endpoint_name != endpoint:
        raise validation_error(f"Endpoint {endpoint_name} not found (this server serves {endpoint!r}).")
    target = headers.get(TARGET_VARIANT)
    if target is not None and target != variant:
        raise validation_error(f"TargetVariant {target} not found (this endpoint has {variant!r}).")
    for header, feature in UNSUPPORTED.items():
        if header in headers:
            raise validation_error(f"{feature} is not supported by this endpoint.")
    accept = headers.get("accept")
    if accept and not any(a.split(";")[0].strip() in ACCEPTED for a in accept.split(",")):
        raise validation_error(f"Accept {accept!r} cannot be served; this endpoint answers application/json.")
