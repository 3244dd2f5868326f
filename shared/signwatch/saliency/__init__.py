"""Saliency maps that explain the classifier's predictions.

FullGrad (``fullgrad``) is the method of record: exact, checked per sample by its completeness
identity. Grad-CAM and the input-gradient maps are cheaper, coarser companions; ``render`` turns any
of them into images. All take the model's normalised (B, C, H, W) input and leave the model as found.
"""

from .fullgrad import FullGradResult, bias_layers, effective_bias, fullgrad, straightforward_fullgrad
from .gradcam import gradcam
from .gradients import input_gradient, input_x_gradient, normalize_per_sample
from .render import heatmap, jet, overlay, side_by_side

__all__ = [
    "FullGradResult",
    "bias_layers",
    "effective_bias",
    "fullgrad",
    "gradcam",
    "heatmap",
    "input_gradient",
    "input_x_gradient",
    "jet",
    "normalize_per_sample",
    "overlay",
    "side_by_side",
    "straightforward_fullgrad",
]
