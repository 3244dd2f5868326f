"""The one definition of the classifier: architecture, preprocessing, class names, weights.

Inference, the explainer, the attacks and training all build the model here, so that what is
served is what was trained and what is explained. Weights are safetensors (never pickles) with
a JSON manifest beside them.
"""

from signwatch.model.core import (
    DEFAULT_WEIGHTS,
    ModelSpec,
    build_model,
    load_model,
    normalize,
    preprocess,
    save_model,
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "ModelSpec",
    "build_model",
    "load_model",
    "normalize",
    "preprocess",
    "save_model",
]
