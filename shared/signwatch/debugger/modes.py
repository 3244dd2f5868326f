"""smdebug's modes, so that analysis code written for smdebug runs unchanged:

    from signwatch.debugger import create_trial, modes
    trial.steps(mode=modes.PREDICT)

Every step the inference service records is a PREDICT step (its mode step equals its step).
A mode is compared by name, so smdebug's own ``smdebug.modes.PREDICT`` is accepted too.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["ModeKeys", "TRAIN", "EVAL", "PREDICT", "GLOBAL", "mode_name"]


class ModeKeys(Enum):
    # smdebug's values: they go into the exported events' "mode" plugin data.
    TRAIN = 1
    EVAL = 2
    PREDICT = 3
    GLOBAL = 4


TRAIN, EVAL, PREDICT, GLOBAL = ModeKeys.TRAIN, ModeKeys.EVAL, ModeKeys.PREDICT, ModeKeys.GLOBAL


def mode_name(mode: object) -> str:
    """'PREDICT', 'TRAIN', ... for a mode given as this module's, smdebug's, a string or None (GLOBAL)."""
    if mode is None:
        return "GLOBAL"
    name = getattr(mode, "name", mode)
    if not isinstance(name, str) or name.upper() not in ModeKeys.__members__:
        raise ValueError(f"unknown mode {mode!r}; use signwatch.debugger.modes.PREDICT (or TRAIN, EVAL, GLOBAL)")
    return name.upper()


def recorded(mode: object) -> bool:
    """Whether steps of ``mode`` exist here: the service records PREDICT steps, GLOBAL means all."""
    return mode_name(mode) in ("PREDICT", "GLOBAL")
