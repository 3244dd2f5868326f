"""The run-time debugger: tensors and gradients recorded per request, read back as trials.

- :class:`Debugger` records (switched on at run time, see ``PUT /admin/debugger``), one worker per replica;
- :func:`create_trial` reads steps back as smdebug does (``steps(mode=modes.PREDICT)``,
  ``tensor_names(regex=...)``, ``tensor(name).value(step_num, mode=modes.PREDICT)``), under
  signwatch's names and smdebug's;
- :func:`fullgrad_from_trial` computes the FullGrad map of a recorded step;
- :func:`export_smdebug` writes a trial in smdebug's own on-disk layout (``signwatch debugger export``).

Layout and names: :mod:`signwatch.debugger.layout`; guide: docs/debugger.md.
"""

from . import modes
from .config import DEFAULT_INCLUDE_REGEX, DebuggerConfig, sampled
from .layout import INPUT_NAME, default_worker, gradient_name, output_name, smdebug_name, tensors_prefix
from .recorder import Debugger, bias_layer_info
from .saliency import TrialFullGrad, fullgrad_from_trial, fullgrad_result_from_trial
from .smdebug_export import export_smdebug
from .trial import StepUnavailable, TensorUnavailable, Trial, TrialTensor, create_trial

__all__ = [
    "DEFAULT_INCLUDE_REGEX",
    "INPUT_NAME",
    "Debugger",
    "DebuggerConfig",
    "StepUnavailable",
    "TensorUnavailable",
    "Trial",
    "TrialFullGrad",
    "TrialTensor",
    "bias_layer_info",
    "create_trial",
    "default_worker",
    "export_smdebug",
    "fullgrad_from_trial",
    "fullgrad_result_from_trial",
    "gradient_name",
    "modes",
    "output_name",
    "sampled",
    "smdebug_name",
    "tensors_prefix",
]
