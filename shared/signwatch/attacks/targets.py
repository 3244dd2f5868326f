"""The attack's target class, named by id or by label, resolved once against the model's labels.

Importable without torch (the command line resolves ``--target`` before it loads the model).

    resolve_target(spec, 14)          -> 14
    resolve_target(spec, "14")        -> 14   a string of digits is a class id
    resolve_target(spec, "Stop")      -> 14   else a label of the served model (exact, then ignoring case)
    resolve_target(spec, "class_3")   -> 3    an imported model's default labels
    resolve_target(spec, None)        -> the class labelled "Stop" when the model has one, else an error

A label that is itself a string of digits is reached by its id.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Sequence
from typing import Protocol

from signwatch.attacks.defaults import DEFAULT_TARGET_LABEL

__all__ = ["DEFAULT_TARGET_LABEL", "UnknownTarget", "resolve_target"]

LISTED = 8  # labels named in an error: enough to see their spelling
_CLASS_ID = re.compile(r"[+-]?\d+")


class _HasLabels(Protocol):
    class_names: Sequence[str]


class UnknownTarget(ValueError):
    """The target names no class of the model: the message says which exist."""


def _some_labels(names: Sequence[str], near: str | None = None) -> str:
    close = difflib.get_close_matches(near, names, n=3, cutoff=0.6) if near else []
    shown = close or list(names[:LISTED])
    listed = ", ".join(repr(n) for n in shown)
    more = "" if close or len(names) <= LISTED else f", ... ({len(names)} in all)"
    return f"did you mean {listed}?" if close else f"its labels: {listed}{more}"


def resolve_target(spec: _HasLabels, value: int | str | None) -> int:
    """The class id ``value`` names in the model described by ``spec`` (its ``class_names``)."""
    names = tuple(spec.class_names)
    last = len(names) - 1
    if value is None:
        if DEFAULT_TARGET_LABEL in names:
            return names.index(DEFAULT_TARGET_LABEL)
        raise UnknownTarget(f"the model has no {DEFAULT_TARGET_LABEL!r} class: name the target class by id "
                            f"(0..{last}) or label; {_some_labels(names)}")
    if not isinstance(value, str) or _CLASS_ID.fullmatch(value.strip()):
        try:  # numpy and 0-d torch integers too, never a bool or a float
            class_id = int(value) if isinstance(value, str) else operator.index(value)
        except TypeError:
            raise UnknownTarget(f"a target is a class id or a label; got {value!r}") from None
        if isinstance(value, bool):
            raise UnknownTarget(f"a target is a class id or a label; got {value!r}")
        if not 0 <= class_id <= last:
            raise UnknownTarget(f"class id {class_id} is outside 0..{last}")
        return class_id
    label = value.strip()
    if label in names:
        return names.index(label)
    folded = [i for i, n in enumerate(names) if n.casefold() == label.casefold()]
    if len(folded) == 1:
        return folded[0]
    raise UnknownTarget(f"the model has no class labelled {value!r}; {_some_labels(names, label)}")
