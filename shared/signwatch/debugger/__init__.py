"""The run-time debugger: tensors and gradients recorded per request, read back as trials.

- :class:`Debugger` records (switched on at run time, see ``PUT /admin/debugger``);
- :func:`create_trial` reads steps back (``steps()``, ``tensor_names()``, ``tensor(name).value(step)``);
- :func:`fullgrad_from_trial` computes the FullGrad map of a recorded step.

Layout and names: :mod:`signwatch.debugger.layout`; guide: docs/debugger.md.
"""

from .config import DEFAULT_INCLUDE_REGEX, DebuggerConfig, sampled
from .layout import INPUT_NAME, gradient_name, output_name, tensors_prefix
from .recorder import Debugger, bias_layer_info
from .saliency import TrialFullGrad, fullgrad_from_trial, fullgrad_result_from_trial
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
    "fullgrad_from_trial",
    "fullgrad_result_from_trial",
    "gradient_name",
    "output_name",
    "sampled",
    "tensors_prefix",
]
