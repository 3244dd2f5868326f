"""ResNet18 with a 43-way head, ImageNet normalisation, safetensors weights + manifest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchvision.models import resnet18

from signwatch.data.classes import CLASS_NAMES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODELS_DIR = Path(__file__).resolve().parents[3] / "models"
DEFAULT_WEIGHTS = MODELS_DIR / "signwatch-resnet18.safetensors"


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

    def to_json(self) -> dict:
        return asdict(self)


def build_model(num_classes: int = len(CLASS_NAMES), seed: int | None = 0) -> torch.nn.Module:
    """torchvision's resnet18 with a ``num_classes`` head, in eval mode.

    With ``seed`` the random initialisation is reproducible: an untrained model then still
    answers the same everywhere, which the tests and the demo rely on until weights ship.
    """
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = resnet18(weights=None, num_classes=num_classes)
    return model.eval()


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


def save_model(model: torch.nn.Module, spec: ModelSpec, path: Path, half: bool = True) -> Path:
    """Write ``path`` (safetensors) and ``path.json`` (the manifest with the weights' sha256)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"architecture": spec.architecture})
    manifest = spec.to_json() | {"weights": path.name, "sha256": file_sha256(path),
                                 "dtype": "float16" if half else "float32"}
    manifest_path(path).write_text(json.dumps(manifest, indent=2) + "\n")
    return path


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
    meta_file = manifest_path(weights)
    if not meta_file.exists():
        raise FileNotFoundError(f"model manifest not found beside the weights: {meta_file}")
    meta = json.loads(meta_file.read_text())
    if meta.get("sha256") and meta["sha256"] != file_sha256(weights):
        raise ValueError(f"sha256 of {weights} does not match its manifest")
    spec = ModelSpec(
        architecture=meta.get("architecture", "resnet18"),
        input_size=int(meta["input_size"]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        class_names=tuple(meta["class_names"]),
        version=meta.get("version", weights.stem),
        extra=meta.get("extra", {}),
    )
    if spec.architecture != "resnet18":
        raise ValueError(f"unsupported architecture {spec.architecture!r}")
    model = build_model(spec.num_classes, seed=None)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    model.load_state_dict(state)
    return model.to(device).eval(), spec
