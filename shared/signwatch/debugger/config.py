"""What the run-time debugger records: the include regex, the sample rate, an optional step cap.

Switched on and off through ``PUT /admin/debugger`` on the inference service (see docs/debugger.md);
a PUT replaces the whole configuration, so fields left out take their defaults. An include regex
left out (None) means the served model's default, derived from its architecture
(``signwatch.model.architectures``); the debugger resolves it where it knows the model.
"""

from __future__ import annotations

import hashlib
import re
from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field, field_validator

from signwatch.model.architectures import RESNET_INCLUDE_REGEX

from .layout import smdebug_name

__all__ = ["DEFAULT_INCLUDE_REGEX", "MAX_REGEX_LENGTH", "DebuggerConfig", "sampled"]

# The reference's hook configuration (BatchNorm, biases, downsampling, the model input): the
# default of a ResNet, declared in the registry; every other family has its own there.
DEFAULT_INCLUDE_REGEX = RESNET_INCLUDE_REGEX
MAX_REGEX_LENGTH = 1000


class DebuggerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    include_regex: str | None = Field(
        None, min_length=1, max_length=MAX_REGEX_LENGTH,
        description="tensor names to record: a tensor is recorded when the regex matches anywhere "
                    "(re.search, as smdebug does) in its name or in its smdebug name; names look like "
                    "'layer1.0.bn1_output', 'gradient/layer1.0.bn1_output', 'layer1.0.bn1.running_mean', "
                    "'image', smdebug's like 'layer1.0.bn1_output_0', 'ResNet_bn1.bias', 'ResNet_input_0'. "
                    "None: the served model's default, what FullGrad needs from a trial without the large "
                    "weights (a ResNet's is the reference's '" + DEFAULT_INCLUDE_REGEX + "'; "
                    "docs/architectures.md lists every family's)",
    )
    sample_rate: float = Field(
        1.0, ge=0.0, le=1.0,
        description="share of requests recorded, decided deterministically from the request id",
    )
    max_steps: int | None = Field(
        None, ge=1, le=10_000_000,
        description="switch off by itself after recording this many steps (None: no cap)",
    )

    @field_validator("include_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"include_regex does not compile: {exc}") from exc
        return value

    def resolved(self, default_regex: str) -> "DebuggerConfig":
        """This configuration with ``default_regex`` (the model's default) where the regex is unset."""
        if self.include_regex is not None:
            return self
        return DebuggerConfig.model_validate(self.model_dump() | {"include_regex": default_regex})

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        if self.include_regex is None:
            raise ValueError("the include regex is the model's default: resolve it first (resolved())")
        return re.compile(self.include_regex)

    def includes(self, name: str, root: str | None = None) -> bool:
        """Whether tensor ``name`` is recorded; with ``root`` (the model's class name) its smdebug
        name counts too, so the reference's ``.*ResNet_input`` records the input."""
        if self.pattern.search(name) is not None:
            return True
        return root is not None and self.pattern.search(smdebug_name(name, root)) is not None


def sampled(request_id: str, rate: float) -> bool:
    """Whether ``request_id`` is recorded at ``rate``: the same answer for the same id, everywhere."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    bucket = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big") / 2.0**64
    return bucket < rate
