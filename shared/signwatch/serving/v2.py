"""The Open Inference Protocol (KServe V2, Triton's HTTP/REST API): parse, answer, map errors.

The model's name is the endpoint's name; its one version is the model's version. It takes one
input tensor, either of

- ``images``: ``UINT8`` ``[N, H, W, 3]``, the pixels (RGB), or
- ``image_bytes``: ``BYTES`` ``[N]``, each element a PNG or JPEG file,

written out in JSON (``data``; a BYTES element is a base64 string: JSON holds only text, and the
clients send bytes as UTF-8 strings) or, with the binary tensor data extension, as raw bytes after
the JSON header (``Inference-Header-Content-Length``; BYTES elements each a 4-byte little-endian
length and the bytes, as Triton writes them). It answers ``probabilities`` (``FP32``
``[N, classes]``, the softmax) and ``class_ids`` (``INT64`` ``[N, k]``, best first), and with
in-inference screening on ``adversarial_score`` (``FP32`` ``[N]``) and ``flagged`` (``BOOL``
``[N]``) too (declared in the model metadata only then), each in JSON
or, when asked per output (``"parameters": {"binary_data": true}``) or for all
(``binary_data_output``), as raw little-endian bytes after the JSON. Errors are ``{"error": "..."}``.

Small requests (a PNG sent in binary: a few hundred bytes of JSON) are parsed on the event loop,
where that costs less than the thread hop; a tensor written out in JSON (a 224 x 224 image is
150k numbers) or a large body is parsed in the core's decode pool.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from dataclasses import dataclass

import numpy as np
import orjson

import signwatch
from signwatch.events import TRACK_NAME_PATTERN
from signwatch.imaging import ImageError, check_size, sniff
from signwatch.serving.core import (
    MAX_INFERENCE_ID,
    ImageInput,
    InferenceRequest,
    InferenceResult,
    ServingError,
    refused_image,
)

HEADER_LENGTH = "inference-header-content-length"
SERVER_NAME = "signwatch"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "pytorch"
PIXELS, ENCODED = "images", "image_bytes"
INPUT_TYPES = {PIXELS: "UINT8", ENCODED: "BYTES"}
PROBABILITIES, CLASS_IDS = "probabilities", "class_ids"
OUTPUTS = (PROBABILITIES, CLASS_IDS)
# Answered (and declared in the model's metadata) only when the service screens in its batch.
ADVERSARIAL_SCORE, FLAGGED = "adversarial_score", "flagged"
SCREENING_OUTPUTS = (ADVERSARIAL_SCORE, FLAGGED)
NOT_FOUND = ("unknown_model", "unknown_version")
# Parsed on the event loop up to these sizes; above them in the decode pool.
LOOP_MAX_JSON_BYTES = 4096
LOOP_MAX_BODY_BYTES = 128 * 1024


@dataclass
class V2Request:
    inference: InferenceRequest
    id: str | None  # echoed in the answer; the events' inference id
    outputs: list[tuple[str, bool]]  # (name, binary), in the order asked


@dataclass
class V2Response:
    body: bytes
    content_type: str
    header_length: int | None  # the JSON part's length when binary outputs follow it


def bad_request(message: str) -> ServingError:
    return ServingError("validation", "bad_request", message)


# ---- where the request goes
def infer_target(path: str) -> tuple[str, str | None] | None:
    """(model name, version or None) of ``/v2/models/{name}[/versions/{v}]/infer``; None otherwise."""
    if not (path.startswith("/v2/models/") and path.endswith("/infer")):
        return None
    parts = path[len("/v2/models/"):-len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]
    return None


def check_model(name: str, version: str | None, served_name: str, served_version: str) -> None:
    """404 (as ``error_response`` maps it) for a model or version this server does not serve."""
    if name != served_name:
        raise ServingError("validation", "unknown_model", f"unknown model '{name}': this server serves '{served_name}'")
    if version is not None and version != served_version:
        raise ServingError("validation", "unknown_version",
                           f"unknown version '{version}' of model '{name}': it serves version '{served_version}'")


# ---- metadata
def server_metadata() -> dict:
    return {"name": SERVER_NAME, "version": signwatch.__version__, "extensions": EXTENSIONS}


def model_metadata(name: str, version: str, num_classes: int, top_k: int, screened: bool = False) -> dict:
    """``screened``: the service screens in its batch, and answers the screening outputs too."""
    outputs = [{"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, num_classes]},
               {"name": CLASS_IDS, "datatype": "INT64", "shape": [-1, top_k]}]
    if screened:
        outputs += [{"name": ADVERSARIAL_SCORE, "datatype": "FP32", "shape": [-1]},
                    {"name": FLAGGED, "datatype": "BOOL", "shape": [-1]}]
    return {
        "name": name, "versions": [version], "platform": PLATFORM,
        "inputs": [{"name": PIXELS, "datatype": "UINT8", "shape": [-1, -1, -1, 3]},
                   {"name": ENCODED, "datatype": "BYTES", "shape": [-1]}],
        "outputs": outputs,
    }


def answered_outputs(screened: bool) -> tuple[str, ...]:
    return OUTPUTS + SCREENING_OUTPUTS if screened else OUTPUTS


# ---- the request
async def parse_infer(service, body: bytes, header_length: str | None) -> V2Request:
    """The request's images and what it asks back; raises ServingError. Heavy parsing runs in the
    core's decode pool (``service.offload``), never on the event loop."""
    json_length = _json_length(header_length, len(body))
    screened = service.screening is not None
    if json_length <= LOOP_MAX_JSON_BYTES and len(body) <= LOOP_MAX_BODY_BYTES:
        return parse_infer_body(body, json_length, service.settings, screened)
    return await service.offload(parse_infer_body, body, json_length, service.settings, screened)


def _json_length(header_length: str | None, body_length: int) -> int:
    if header_length is None:
        return body_length
    length = header_length.strip()
    if not (length.isascii() and length.isdigit()) or int(length) > body_length:
        raise bad_request(f"Inference-Header-Content-Length {header_length!r} is not a length within "
                          f"the {body_length}-byte body")
    return int(length)


def parse_infer_body(body: bytes, json_length: int, settings, screened: bool = False) -> V2Request:
    """Parse an infer request: the JSON header (``json_length`` bytes) and the binary data after it.
    Checks the envelope, the tensor's name, datatype and shape against its data, and the images'
    count and size (``settings``: max_batch_images, max_image_side, max_image_pixels).
    ``screened``: the screening outputs may be asked for (and are answered when none are named)."""
    view = memoryview(body)
    try:
        doc = orjson.loads(view[:json_length])
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise bad_request("the request must be a JSON object")
    request_id = _request_id(doc.get("id"))
    parameters = _object(doc.get("parameters"), "parameters")
    track = _track(parameters.get("track"))
    outputs = _requested_outputs(doc.get("outputs"), _flag(parameters, "binary_data_output", False),
                                 answered_outputs(screened))
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        count = len(inputs) if isinstance(inputs, list) else 0
        raise bad_request(f"expected exactly one input ('{PIXELS}' UINT8 [N,H,W,3] or '{ENCODED}' BYTES [N]); "
                          f"got {count}")
    try:
        images = _images(inputs[0], view[json_length:], settings)
    except ImageError as exc:
        raise refused_image(exc) from None
    # No observed content type: the request's (JSON) is not the image's, and data capture then
    # records each image's own (image/png, image/jpeg, application/x-npy).
    # A track travels as SageMaker's custom attribute does (``track=<name>``): one place to read it.
    return V2Request(InferenceRequest(images, inference_id=request_id,
                                      custom_attributes=f"track={track}" if track else None), request_id, outputs)


def _track(value) -> str | None:
    """The request's ``parameters.track``: the client's name for the object its images show
    (frames of one track seen within seconds count once in the monitor)."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(TRACK_NAME_PATTERN, value):
        raise bad_request("parameter 'track' must be a name of 1 to 64 characters: letters, digits and "
                          "_ . : / - (not first)")
    return value


def _request_id(value) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad_request("'id' must be a string")
    if len(value) > MAX_INFERENCE_ID:
        raise bad_request(f"'id' must be at most {MAX_INFERENCE_ID} characters (it is the inference id of "
                          f"the request's events); got {len(value)}")
    return value


def _object(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"'{what}' must be a JSON object")
    return value


def _flag(parameters: dict, name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise bad_request(f"parameter '{name}' must be true or false")
    return value


def _requested_outputs(value, binary_default: bool, answered: tuple[str, ...] = OUTPUTS) -> list[tuple[str, bool]]:
    if value is None or value == []:
        return [(name, binary_default) for name in answered]
    if not isinstance(value, list):
        raise bad_request("'outputs' must be a list")
    outputs = []
    for item in value:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or name not in answered:
            raise bad_request(f"unknown output {name!r}: this model answers {', '.join(answered)}")
        if any(name == n for n, _ in outputs):
            raise bad_request(f"output '{name}' is asked twice")
        parameters = _object(item.get("parameters"), f"outputs[{name}].parameters")
        _no_unsupported(parameters, f"output '{name}'")
        if "classification" in parameters:
            raise bad_request("the classification extension is not supported: ask for 'class_ids'")
        outputs.append((name, _flag(parameters, "binary_data", binary_default)))
    return outputs


def _no_unsupported(parameters: dict, what: str) -> None:
    if any(key.startswith("shared_memory") for key in parameters):
        raise bad_request(f"{what}: shared memory is not supported")


def _images(tensor, binary: memoryview, settings) -> list[ImageInput]:
    if not isinstance(tensor, dict):
        raise bad_request("an input must be a JSON object")
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str) or name not in INPUT_TYPES:
        raise bad_request(f"unknown input {name!r}: this model takes '{PIXELS}' (UINT8 [N,H,W,3]) "
                          f"or '{ENCODED}' (BYTES [N], PNG or JPEG files)")
    if datatype != INPUT_TYPES[name]:
        raise bad_request(f"input '{name}' has datatype {datatype!r}; expected {INPUT_TYPES[name]}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise bad_request(f"input '{name}': 'shape' must be a list of non-negative integers")
    parameters = _object(tensor.get("parameters"), f"input '{name}' parameters")
    _no_unsupported(parameters, f"input '{name}'")
    size = parameters.get("binary_data_size")
    if size is None:
        if len(binary):
            raise bad_request(f"{len(binary)} bytes of binary data follow the JSON, but no input has a "
                              "binary_data_size")
        if "data" not in tensor:
            raise bad_request(f"input '{name}' has neither 'data' nor a binary_data_size")
        chunk, data = None, tensor["data"]
    else:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise bad_request(f"input '{name}': binary_data_size must be a non-negative integer")
        if "data" in tensor:
            raise bad_request(f"input '{name}' has both 'data' and a binary_data_size")
        if size != len(binary):
            raise bad_request(f"input '{name}': binary_data_size is {size} bytes but {len(binary)} bytes follow "
                              "the JSON header (Inference-Header-Content-Length)")
        chunk, data = binary, None
    if name == PIXELS:
        return _pixel_images(shape, chunk, data, settings)
    return _encoded_images(shape, chunk, data, settings)


def _count(n: int, settings) -> None:
    if not 1 <= n <= settings.max_batch_images:
        raise ImageError(f"a request holds 1 to {settings.max_batch_images} images; got {n}",
                         413 if n > settings.max_batch_images else 400)


def _pixel_images(shape: list[int], chunk: memoryview | None, data, settings) -> list[ImageInput]:
    if len(shape) != 4 or shape[3] != 3:
        raise bad_request(f"input '{PIXELS}' must have shape [N, H, W, 3]; got {shape}")
    n, height, width = shape[:3]
    _count(n, settings)
    check_size(width, height, settings.max_image_side, settings.max_image_pixels)
    values = math.prod(shape)
    if chunk is not None:
        if len(chunk) != values:
            raise bad_request(f"input '{PIXELS}': shape {shape} holds {values} UINT8 values; "
                              f"binary_data_size is {len(chunk)}")
        array = np.frombuffer(chunk, np.uint8).reshape(shape).copy()  # writable, and not a view of the body
    else:
        array = _uint8_data(data, values).reshape(shape)
    return [ImageInput.decoded(image) for image in array]  # each event's .npy is encoded in the worker


def _uint8_data(data, values: int) -> np.ndarray:
    if not isinstance(data, list):
        raise bad_request(f"input '{PIXELS}': 'data' must be a list of integers (flat, or nested row-major)")
    try:
        array = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise bad_request(f"input '{PIXELS}': 'data' must be a list of integers, flat or nested row-major") from None
    if array.size != values:
        raise bad_request(f"input '{PIXELS}': shape holds {values} values; 'data' has {array.size}")
    if array.dtype.kind not in "iu" or array.min() < 0 or array.max() > 255:
        raise bad_request(f"input '{PIXELS}': UINT8 data must be integers from 0 to 255")
    return array.astype(np.uint8).reshape(-1)


def _encoded_images(shape: list[int], chunk: memoryview | None, data, settings) -> list[ImageInput]:
    if len(shape) != 1:
        raise bad_request(f"input '{ENCODED}' must have shape [N]; got {shape}")
    n = shape[0]
    _count(n, settings)
    files = _split_bytes(chunk, n) if chunk is not None else _base64_elements(data, n)
    if len(files) != n:
        raise bad_request(f"input '{ENCODED}': shape [{n}] but {len(files)} elements")
    images = []
    for i, file in enumerate(files):
        kind = sniff(file)
        if kind not in ("png", "jpeg"):
            raise ImageError(f"element {i} of '{ENCODED}' is not a PNG or JPEG file")
        images.append(ImageInput.encoded(file, kind))
    return images


def _split_bytes(chunk: memoryview, n: int) -> list[bytes]:
    """Triton's binary BYTES: each element a 4-byte little-endian length, then its bytes."""
    files, at = [], 0
    while at < len(chunk) and len(files) <= n:
        if at + 4 > len(chunk):
            raise bad_request(f"input '{ENCODED}': binary data truncated in the length of element {len(files)}")
        (length,) = struct.unpack_from("<I", chunk, at)
        at += 4
        if at + length > len(chunk):
            raise bad_request(f"input '{ENCODED}': element {len(files)} claims {length} bytes; "
                              f"{len(chunk) - at} remain")
        files.append(bytes(chunk[at:at + length]))
        at += length
    return files


def _base64_elements(data, n: int) -> list[bytes]:
    if not isinstance(data, list):
        raise bad_request(f"input '{ENCODED}': 'data' must be a list of base64 strings")
    flat = data if all(isinstance(e, str) for e in data) else _flatten(data)
    if len(flat) != n:
        raise bad_request(f"input '{ENCODED}': shape [{n}] but {len(flat)} elements")
    files = []
    for i, element in enumerate(flat):
        if not isinstance(element, str):
            raise bad_request(f"input '{ENCODED}': element {i} is not a string (base64 of a PNG or JPEG)")
        try:
            files.append(base64.b64decode(element, validate=True))
        except (binascii.Error, ValueError):
            raise bad_request(f"input '{ENCODED}': element {i} is not base64 (JSON carries BYTES as base64 "
                              "strings; or send them as binary data)") from None
    return files


def _flatten(data: list) -> list:
    """Nested lists (row-major) flattened, without recursion (JSON may nest 1,024 deep)."""
    out, stack = [], [iter(data)]
    while stack:
        for e in stack[-1]:
            if isinstance(e, list):
                stack.append(iter(e))
                break
            out.append(e)
        else:
            stack.pop()
    return out


# ---- the answer
def response(request: V2Request, result: InferenceResult, model_name: str) -> V2Response:
    probabilities = np.stack(result.probabilities).astype("<f4", copy=False)
    class_ids = np.array([[p.class_id for p in row] for row in result.predictions], dtype="<i8")
    tensors = {PROBABILITIES: ("FP32", probabilities), CLASS_IDS: ("INT64", class_ids)}
    if result.screenings is not None:
        tensors[ADVERSARIAL_SCORE] = ("FP32", np.array([s.score for s in result.screenings], dtype="<f4"))
        tensors[FLAGGED] = ("BOOL", np.array([s.flagged for s in result.screenings], dtype=np.bool_))
    outputs, blobs = [], []
    for name, binary in request.outputs:
        datatype, array = tensors[name]
        output = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blobs.append(array.tobytes())
            output["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            output["data"] = array.reshape(-1)
        outputs.append(output)
    answer = {"model_name": model_name, "model_version": result.model_version, "outputs": outputs}
    if request.id is not None:
        answer["id"] = request.id
    header = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return V2Response(header, "application/json", None)
    return V2Response(b"".join([header, *blobs]), "application/octet-stream", len(header))


def binary_request(tensor: np.ndarray | list[bytes], request_id: str | None = None,
                   binary_outputs: bool = True) -> tuple[bytes, int]:
    """A client's infer request with its input as binary data: pixels (uint8 [N, H, W, 3]) or
    PNG/JPEG files. Returns (body, Inference-Header-Content-Length): built once, it can be replayed
    as it is (``wrk``, tests)."""
    if isinstance(tensor, np.ndarray):
        name, datatype, shape = PIXELS, "UINT8", list(tensor.shape)
        data = np.ascontiguousarray(tensor, dtype=np.uint8).tobytes()
    else:
        name, datatype, shape = ENCODED, "BYTES", [len(tensor)]
        data = b"".join(struct.pack("<I", len(f)) + f for f in tensor)
    doc: dict = {"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                             "parameters": {"binary_data_size": len(data)}}],
                 "parameters": {"binary_data_output": binary_outputs}}
    if request_id is not None:
        doc["id"] = request_id
    header = orjson.dumps(doc)
    return header + data, len(header)


def error_response(exc: ServingError) -> tuple[int, dict]:
    """(status, body) of a refused request."""
    if exc.reason in NOT_FOUND:
        status = 404
    elif exc.kind == "input":
        status = {"payload_too_large": 413, "body_timeout": 408}.get(exc.reason, 400)
    else:
        status = {"validation": 400, "busy": 429, "unavailable": 503}.get(exc.kind, 500)
    return status, {"error": exc.message}
