"""Every event that crosses the bus, as versioned pydantic models.

The ``schema`` field names the type and its version. A consumer that meets a schema it does not
know (or a message that is not JSON) treats it as poison: it logs it, counts it and moves on.

The models also say what an event means, so that every consumer checks it at its edge, once, here:
probabilities are finite numbers in [0, 1] (a JSON string is not a number), an output has at least
one prediction and at most ``MAX_PREDICTIONS`` with distinct class ids, names that end up in store
keys are plain names, strings are bounded. An event that passes can be counted, captured and
explained without raising (issue 16: a probability of 1e308 stopped the monitor for good).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Annotated, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator


# Bounds of an event's parts. The producer stays far inside them; what lies outside is poison.
MAX_PREDICTIONS = 1000          # classes in one answer: Settings.top_k is bounded by it
MAX_NAME = 128                  # endpoint, variant, model version, ids
MAX_LABEL = 256                 # a class name
MAX_CONTENT_TYPE = 128          # a sniffed content type
MAX_HEADER_TEXT = 16 * 1024     # text a client sent in an HTTP header (its whole header block is less)
MAX_KEY = 1024                  # an object-store key
# Names that become parts of store keys and Redis keys (endpoint, variant, event and violation ids):
# no separators, no "..", nothing to escape. SageMaker's own endpoint names are a subset.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# A client's name for the object its frames show (``track=<name>`` in the custom attributes): the
# monitor counts the frames of one named track seen within seconds as one observation.
TRACK_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$"

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME, pattern=NAME_PATTERN)]
Text = Annotated[str, Field(max_length=MAX_NAME)]
Probability = Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)]
ClassId = Annotated[int, Field(strict=True, ge=0)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Size = Annotated[int, Field(strict=True, ge=0)]
ImageHash = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]


def store_key(key: str) -> str:
    """A key an event names in the object store: relative, no ``..`` segment, no control
    characters (an event must not make a consumer read or write outside the store's prefixes)."""
    if not key or len(key) > MAX_KEY or key.startswith("/") or "\\" in key \
            or any(ord(c) < 32 for c in key) or ".." in key.split("/"):
        raise ValueError(f"not a plain object-store key: {key[:80]!r}")
    return key


StoreKey = Annotated[str, AfterValidator(store_key)]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return str(uuid.uuid4())


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class InputPayload(BaseModel):
    """The request body: inline (base64) or, when large, a claim check in the object store.

    ``content_type`` is what the bytes are (sniffed: image/png, image/jpeg, application/x-npy);
    ``observed_content_type`` is the header the client sent (v2), which data capture records.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    content_type: str = Field(max_length=MAX_CONTENT_TYPE)
    observed_content_type: str | None = Field(None, max_length=MAX_HEADER_TEXT)
    encoding: Literal["BASE64"] = "BASE64"
    data: str | None = None
    ref: StoreKey | None = Field(None, description="object-store key holding the raw bytes")
    sha256: Sha256
    size: Size

    @model_validator(mode="after")
    def _inline_or_claim_check(self) -> "InputPayload":
        if (self.data is None) == (self.ref is None):
            raise ValueError("an input is either inline (data) or a claim check (ref), exactly one")
        return self


class Prediction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    class_id: ClassId
    label: str = Field(max_length=MAX_LABEL)
    probability: Probability


class InferenceOutput(BaseModel):
    """The response body returned to the client: the top-k classes, each once; with in-inference
    screening on (``Settings.screening_in_inference``), the image's adversarial score and whether
    it crossed the threshold too. Without them the JSON is what it always was: the two keys are
    written only when set, so an answer (and an event) from a service with screening off is
    byte for byte the one before they existed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    predictions: list[Prediction] = Field(min_length=1, max_length=MAX_PREDICTIONS)
    model_version: Text
    adversarial_score: float | None = Field(
        None, allow_inf_nan=False, description="the image's adversarial score (signwatch.screening), when the "
        "inference service screens in its batch")
    flagged: bool | None = Field(None, description="adversarial_score above the calibration's threshold")

    @field_validator("predictions")
    @classmethod
    def _distinct_classes(cls, predictions: list[Prediction]) -> list[Prediction]:
        if len({p.class_id for p in predictions}) != len(predictions):
            raise ValueError("a class id appears twice in one answer")
        return predictions

    @model_serializer(mode="wrap")
    def _unset_scores_unwritten(self, handler):
        data = handler(self)
        for key in ("adversarial_score", "flagged"):
            if data.get(key, 0) is None:
                del data[key]
        return data


class ResponsePayload(BaseModel):
    """The response body exactly as the client received it (v2): data capture writes these bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    content_type: str = "application/json"
    data: str


INFERENCE_SCHEMA = "signwatch.inference/v3"
# Written only by a service that screens in its batch (the event then carries ``screening``): a
# service with screening off (the default) keeps writing v3, which consumers from before v4 read.
INFERENCE_SCHEMA_SCREENED = "signwatch.inference/v4"


class ScreeningScore(BaseModel):
    """An image's adversarial score and what judged it: declared once for the inference event's
    ``screening`` block (v4) and the explainer's ``ScreeningEvent``, so one is built from the other."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    score: float = Field(allow_inf_nan=False, description="adversarial score: 0 at the clean reference's "
                         "median, 1 at its 99th percentile (per squeezer, the largest)")
    flagged: bool = Field(description="score above threshold: reads as an attack")
    threshold: float = Field(allow_inf_nan=False)
    fpr: Probability = Field(description="the false positive rate on clean reference images the threshold was "
                             "chosen for: the flagged share expected of clean traffic")
    squeezer: Text = Field(description="the squeezed copy that moved the answer most (shift:1, down:2, ...)")
    signal: Text = Field(description="what is measured under each squeezer: margin_drop or softmax_l1")
    calibration_id: Text | None = Field(None, description="the calibration's store key or file it came from")


class InferenceScreening(ScreeningScore):
    """How the inference service screened the image in its batch (v4): all a ``ScreeningEvent``
    says of its score."""


class InferenceEvent(_Event):
    """One image's inference. v2 adds ``custom_attributes``, ``response`` and the input's
    ``observed_content_type``; v3 adds ``image_hash``; v4 adds ``screening`` (and the output's
    ``adversarial_score`` and ``flagged``), written only when the service screens in its batch;
    all optional, so older events still parse (and are read as what they are)."""

    schema_: Literal["signwatch.inference/v1", "signwatch.inference/v2", "signwatch.inference/v3",
                     "signwatch.inference/v4"] = Field(INFERENCE_SCHEMA, alias="schema", serialization_alias="schema")
    event_id: Name = Field(default_factory=new_id)
    inference_id: str | None = Field(None, max_length=64)
    custom_attributes: str | None = Field(None, max_length=1024)
    time: datetime = Field(default_factory=utc_now)
    endpoint: Name
    variant: Name
    model_version: Text
    input: InputPayload
    output: InferenceOutput
    response: ResponsePayload | None = None
    latency_ms: float = Field(ge=0, allow_inf_nan=False)
    image_hash: ImageHash | None = Field(
        None, description="64-bit perceptual hash (pHash) of the decoded image, as 16 hex digits: near-duplicate "
                          "frames of one object are close in Hamming distance (the monitor counts them once)")
    screening: InferenceScreening | None = Field(
        None, description="the adversarial score the inference service took in its batch (v4; "
        "Settings.screening_in_inference): the explainer need not screen the event again")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _screened_is_v4(cls, data):
        """An event built with ``screening`` and no schema is a v4 one; an older schema never had it."""
        if isinstance(data, dict) and data.get("screening") is not None \
                and data.get("schema", data.get("schema_")) is None:
            data = {**data, "schema": INFERENCE_SCHEMA_SCREENED}
        return data

    @model_validator(mode="after")
    def _screening_needs_v4(self) -> "InferenceEvent":
        if self.screening is not None and self.schema_ != INFERENCE_SCHEMA_SCREENED:
            raise ValueError(f"'screening' is a field of {INFERENCE_SCHEMA_SCREENED}, not of {self.schema_}")
        return self

    def to_bytes(self) -> bytes:
        # no "screening": null in an event that has none: a consumer from before v4 forbids the key
        return self.model_dump_json(by_alias=True, exclude={"screening"} if self.screening is None else None).encode()


def encode_inference_event(*, event_id: str, time: datetime, endpoint: str, variant: str, model_version: str,
                           input: InputPayload, output_json: str, response_type: str, latency_ms: float,
                           inference_id: str | None = None, custom_attributes: str | None = None,
                           image_hash: str | None = None, screening: InferenceScreening | None = None) -> bytes:
    """The bytes of an ``InferenceEvent`` built from parts the serving core already holds: the
    output as the response's JSON text (it is the same object), without building the model.

    The serving path publishes one per request. On the 2-core Xeon this takes 6 us against 18 us
    for building and dumping the model (23 + 16 us in the loaded server); the model's validation
    is kept by the parts (``input`` is a model, the output text was dumped from one) and by
    tests/unit/test_events.py, which checks that these bytes parse to the model built field by field.
    With ``screening`` the event is a v4 one; without, v3 with no ``screening`` key (what every
    consumer from before v4 reads).
    """
    extra = {} if screening is None else {"screening": screening.model_dump()}
    return orjson.dumps({
        "schema": INFERENCE_SCHEMA if screening is None else INFERENCE_SCHEMA_SCREENED,
        "event_id": event_id, "inference_id": inference_id,
        "custom_attributes": custom_attributes, "time": time, "endpoint": endpoint, "variant": variant,
        "model_version": model_version, "input": input.model_dump(), "output": orjson.Fragment(output_json),
        "response": {"content_type": response_type, "data": output_json}, "latency_ms": latency_ms,
        "image_hash": image_hash, **extra,
    }, option=orjson.OPT_UTC_Z)


class ViolationCheck(BaseModel):
    """One entry of a SageMaker ``constraint_violations.json`` report."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feature_name: str
    # SageMaker's data-quality check types, and its model-quality ones (the comparison operator
    # of the constraint the metric crossed, ``feature_name`` then being the metric's name)
    constraint_check_type: Literal["baseline_drift_check", "completeness_check", "data_type_check",
                                   "LessThanThreshold", "GreaterThanThreshold"]
    description: str


class ViolationSample(BaseModel):
    """An input behind a violation, by reference: the bytes live in the object store (v2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Name
    ref: StoreKey = Field(description="object-store key of the request bytes")
    sha256: Sha256
    size: Size
    content_type: str = Field(max_length=MAX_CONTENT_TYPE)
    predicted_class: ClassId
    probability: Probability


class ViolationWindow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["time", "count", "batch"]
    seconds: int | None = None
    size: int | None = None
    start: datetime | None = None
    end: datetime | None = None


# A violation is small whatever the images and the number of samples: samples are references.
MAX_VIOLATION_SAMPLES = 64
MAX_VIOLATION_BYTES = 64 * 1024


class ViolationEvent(_Event):
    """An incident that opened (``state="open"``, once per incident) or ended (``"resolved"``).

    ``check_name`` is the check that speaks for it (the first failing in the registry's order),
    ``checks`` every check that failed with it (v3; v2 events, one per check, still parse)."""

    schema_: Literal["signwatch.violation/v2", "signwatch.violation/v3"] = Field(
        "signwatch.violation/v3", alias="schema", serialization_alias="schema"
    )
    violation_id: Name = Field(default_factory=new_id)
    state: Literal["open", "resolved"] = "open"
    time: datetime = Field(default_factory=utc_now)
    endpoint: Name
    variant: Name
    model_version: Text | None = None
    check: ViolationCheck
    check_name: str = Field("over_prediction", description="which signwatch check: over_prediction, ...")
    checks: list[Name] = Field([], max_length=64, description="every check failing in the incident (v3)")
    class_id: int | None = Field(None, description="the class a class check names (or whose share rose most)")
    share: float | None = None
    observed: float | None = Field(None, description="the observed value (a share, a distance)")
    statistic: float | None = None
    p_value: float | None = None
    threshold: float | None = None
    count: int
    total: int
    window_seconds: int
    window: ViolationWindow | None = None
    baseline_id: str | None = None
    tipped_at: datetime | None = Field(None, description="time of the event that tipped the check")
    report: str | None = Field(None, description="object-store key of constraint_violations.json")
    samples: list[ViolationSample] = Field([], max_length=MAX_VIOLATION_SAMPLES)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


BaselineSource = Literal["given", "store", "shipped", "learned", "none"]


class BaselineEvent(_Event):
    """A baseline learned from an endpoint's first traffic took over its monitoring (once across
    replicas): its files are in the store, in SageMaker's shapes, where an uploaded one would be."""

    schema_: Literal["signwatch.baseline/v1"] = Field(
        "signwatch.baseline/v1", alias="schema", serialization_alias="schema"
    )
    event_id: Name = Field(default_factory=new_id)
    time: datetime = Field(default_factory=utc_now)
    endpoint: Name
    variant: Name
    model_version: Text | None = None
    num_classes: int = Field(ge=1, le=MAX_PREDICTIONS)
    baseline_id: Name
    item_count: int = Field(ge=1, description="predictions the baseline was learned from")
    learned_from: datetime = Field(description="event time of the first prediction learned from")
    learned_to: datetime = Field(description="event time of the newest prediction when it took over")
    statistics: StoreKey = Field(description="object-store key of statistics.json")
    constraints: StoreKey = Field(description="object-store key of constraints.json")
    previous: BaselineSource = Field(description="what judged the traffic before: the shipped baseline, or none")
    previous_baseline_id: Name | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class GroundTruthData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str = Field(max_length=MAX_LABEL, description="the true class: its id (\"14\") or the model's name "
                      "for it (\"Stop\"), one CSV field")
    encoding: Literal["CSV"] = "CSV"


class GroundTruthMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    eventId: str = Field(min_length=1, max_length=MAX_NAME, description="the client's inferenceId or "
                         "signwatch's event id of the prediction the label is for")
    inferenceId: str | None = Field(None, min_length=1, max_length=MAX_NAME)


class GroundTruthRecord(_Event):
    """A label for one prediction: SageMaker's ground-truth record (the line its merge job reads
    from ``groundtruth/{endpoint}/yyyy/mm/dd/hh/``), as label files, ``POST /ground-truth`` and
    the topic carry it. ``schema`` and ``endpoint`` are signwatch's and optional: a record a
    SageMaker tool wrote is taken as it is, by the monitor of the endpoint that reads the topic.
    The monitor reads every source with ``groundtruth.parse_label``, which counts what is wrong
    with a record rather than refusing the batch (tests/unit/test_groundtruth.py holds the two
    to the same records)."""

    schema_: Literal["signwatch.ground-truth/v1"] = Field(
        "signwatch.ground-truth/v1", alias="schema", serialization_alias="schema"
    )
    endpoint: Name | None = Field(None, description="the endpoint whose prediction it labels (default: the "
                                  "endpoint of the monitor reading it)")
    groundTruthData: GroundTruthData
    eventMetadata: GroundTruthMetadata
    eventVersion: str = Field("0", max_length=8)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class ExplanationEvent(_Event):
    schema_: Literal["signwatch.explanation/v1"] = Field(
        "signwatch.explanation/v1", alias="schema", serialization_alias="schema"
    )
    explanation_id: str = Field(default_factory=new_id)
    violation_id: str
    time: datetime = Field(default_factory=utc_now)
    method: str
    objects: list[str] = Field(description="object-store keys of what was written")
    report: str = Field(description="object-store key of report.json")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class ScreeningEvent(_Event, ScreeningScore):
    """One screened inference event: its adversarial score (``signwatch.screening``) and whether
    it crossed the threshold chosen on clean reference images for ``fpr`` false positives. The
    explainer publishes one per inference event it screens (all, or a sampled share); the monitor
    counts the flagged share against ``fpr`` (check ``adversarial_share``)."""

    schema_: Literal["signwatch.screening/v1"] = Field(
        "signwatch.screening/v1", alias="schema", serialization_alias="schema"
    )
    event_id: Name = Field(description="the screened inference event's event_id")
    time: datetime = Field(default_factory=utc_now, description="when it was screened")
    inference_time: datetime = Field(description="the inference event's time (the monitor's windows count by it)")
    endpoint: Name
    variant: Name
    model_version: Text
    predicted_class: ClassId
    probability: Probability = Field(description="the model's top-1 probability on the image as screened")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class PoisonMessage(ValueError):
    """A message that is not a known event: skipped and counted, never retried forever."""


def parse_event(raw: bytes, expected: type[_Event]) -> _Event:
    try:
        return expected.model_validate_json(raw)
    except Exception as exc:  # pydantic.ValidationError or a decode error
        raise PoisonMessage(f"not a valid {expected.__name__}: {str(exc)[:300]}") from exc
