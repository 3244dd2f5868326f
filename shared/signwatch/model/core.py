"""The model's facts (``ModelSpec``), preprocessing, and safetensors weights with a manifest.

The manifest (``<weights>.json``) is the one place the facts of a served model live: its
architecture (looked up in ``signwatch.model.architectures``), input size, normalisation, class
labels and version, with the sha256 of the weights (and, for an imported model, of its source).
Everything downstream (the inference core, events, the monitor, baselines, the explainer) takes
them from there; ``ModelSpec()``'s defaults describe the shipped GTSRB model only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from signwatch.data.classes import CLASS_NAMES
from signwatch.model import architectures

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODELS_DIR = Path(__file__).resolve().parents[3] / "models"
DEFAULT_WEIGHTS = MODELS_DIR / "signwatch-resnet18.safetensors"


MANIFEST_FORMAT = 2


@dataclass(frozen=True)
class ModelSpec:
    architecture: str = "resnet18"
    input_size: int = 64
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: tuple[str, ...] = CLASS_NAMES
    version: str = "untrained-seed0"
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def arch(self) -> architectures.Architecture:
        return architectures.get(self.architecture)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_manifest(cls, meta: dict, default_version: str = "unversioned") -> "ModelSpec":
        """The spec a manifest describes; a clear ``ValueError`` when it is not usable."""
        try:
            names = tuple(str(n) for n in meta["class_names"])
            spec = cls(architecture=str(meta.get("architecture", "resnet18")), input_size=int(meta["input_size"]),
                       mean=tuple(float(v) for v in meta["mean"]), std=tuple(float(v) for v in meta["std"]),
                       class_names=names, version=str(meta.get("version") or default_version),
                       extra=dict(meta.get("extra") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a usable model manifest: {type(exc).__name__}: {exc}") from None
        spec.arch  # noqa: B018 - an unknown architecture is refused here, with the list
        if len(spec.mean) != 3 or len(spec.std) != 3 or min(spec.std) <= 0:
            raise ValueError("model manifest: mean and std need three values each, std positive")
        if spec.num_classes < 2 or not 8 <= spec.input_size <= 1024:
            raise ValueError(f"model manifest: {spec.num_classes} classes at {spec.input_size} px is not servable")
        return spec

    def manifest(self) -> dict:
        """The manifest's model facts (without the weights' file name and digest)."""
        return self.to_json() | {"num_classes": self.num_classes, "family": self.arch.family,
                                 "fullgrad": "exact" if self.arch.fullgrad_exact else "approximate",
                                 "format": MANIFEST_FORMAT}


def build_model(num_classes: int = len(CLASS_NAMES), seed: int | None = 0,
                architecture: str = "resnet18") -> torch.nn.Module:
    """torchvision's ``architecture`` with a ``num_classes`` head, in eval mode.

    With ``seed`` the random initialisation is reproducible: an untrained model then still
    answers the same everywhere, which the tests and the demo rely on until weights ship.
    """
    return architectures.build(architecture, num_classes, seed=seed)


def normalize(images01: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the model's input. Differentiable: attacks work in [0, 1]."""
    mean = torch.tensor(spec.mean, device=images01.device, dtype=images01.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=images01.device, dtype=images01.dtype).view(1, 3, 1, 1)
    return (images01 - mean) / std


def to_unit_tensor(images: list[np.ndarray] | np.ndarray, size: int) -> torch.Tensor:
    """uint8 HWC images of any size -> (B, 3, size, size) float in [0, 1], resized bilinearly."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    out = []
    for img in images:
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255)
        if t.shape[1:] != (size, size):
            t = F.interpolate(t[None], size=(size, size), mode="bilinear",
                              align_corners=False, antialias=True)[0]
        out.append(t)
    return torch.stack(out).clamp_(0, 1)


def preprocess(images: list[np.ndarray] | np.ndarray, spec: ModelSpec) -> torch.Tensor:
    return normalize(to_unit_tensor(images, spec.input_size), spec)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def save_model(model: torch.nn.Module, spec: ModelSpec, path: Path, half: bool = True,
               source: dict | None = None) -> Path:
    """Write ``path`` (safetensors) and ``path.json`` (the manifest with the weights' sha256;
    ``source``: where imported weights came from, with its sha256)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"architecture": spec.architecture})
    manifest = spec.manifest() | {"weights": path.name, "sha256": file_sha256(path),
                                  "dtype": "float16" if half else "float32"}
    if source is not None:
        manifest["source"] = source
    manifest_path(path).write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def load_manifest(weights: Path | str) -> dict:
    """The manifest beside ``weights`` (a clear error when it is missing or not JSON)."""
    meta_file = manifest_path(Path(weights))
    if not meta_file.exists():
        raise FileNotFoundError(f"model manifest not found beside the weights: {meta_file}")
    try:
        return json.loads(meta_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"model manifest {meta_file} is not JSON: {exc}") from None


def load_spec(path: Path | str | None = None) -> ModelSpec:
    """The facts of the model at ``path`` (its manifest only; the weights are not read)."""
    weights = Path(path) if path is not None else DEFAULT_WEIGHTS
    if path is None and not weights.exists():
        return ModelSpec()
    return ModelSpec.from_manifest(load_manifest(weights), default_version=weights.stem)


def load_model(path: Path | str | None = None, device: str | torch.device = "cpu",
               ) -> tuple[torch.nn.Module, ModelSpec]:
    """The ready model (eval mode, float32) and its spec.

    ``path=None`` loads the shipped weights when present, else a seeded untrained model.
    The manifest's sha256 is checked so that a swapped or damaged file is refused.
    """
    weights = Path(path) if path is not None else DEFAULT_WEIGHTS
    if path is None and not weights.exists():
        spec = ModelSpec()
        return build_model(spec.num_classes).to(device), spec
    if not weights.exists():
        raise FileNotFoundError(f"model weights not found: {weights}")
    meta = load_manifest(weights)
    if meta.get("sha256") and meta["sha256"] != file_sha256(weights):
        raise ValueError(f"sha256 of {weights} does not match its manifest")
    spec = ModelSpec.from_manifest(meta, default_version=weights.stem)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    from signwatch.model.importing import check_state

    check_state(state, spec.architecture, spec.num_classes)  # a clear list of what does not fit
    model = architectures.build(spec.architecture, spec.num_classes, state)
    return model.to(device).eval(), spec
