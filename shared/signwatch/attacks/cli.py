"""``signwatch attack``: craft targeted adversarial images and write them with their figures.

    signwatch attack --method pgd --target Stop --eps 0.0314 --steps 10 --count 64 --out attacks/pgd

By default it renders a fresh test set (split "test", ``--seed``); ``--images`` takes a folder of
PNG/JPEG/PPM files, a GTSRB folder layout (labels from its CSVs), or a ``.npy`` array
(N, H, W, 3) uint8 (labels from a ``labels.json`` beside it, as this command writes). ``--target``
names the class by id or by a label of the model (``--weights``: any signwatch safetensors with its
manifest, imported models too); without it, the class labelled "Stop".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from signwatch.attacks.defaults import DEFAULT_OVERSHOOT, DEFAULT_STEPS, METHODS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm")
DEFAULT_COUNT = 64

attack_app = typer.Typer(name="attack", add_completion=False, no_args_is_help=False, subcommand_metavar="",
                         help="Craft targeted adversarial images (default: make the model say Stop).")


class AttackInputError(ValueError):
    """The images given to the command cannot be used."""


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def _labels_beside(npy: Path, n: int) -> np.ndarray | None:
    path = npy.with_name("labels.json")
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        labels = data["labels"] if isinstance(data, dict) else data
        if len(labels) != n:
            return None
        return np.array([-1 if v is None else int(v) for v in labels], dtype=np.int64)
    except (ValueError, KeyError, TypeError):
        return None


def _load_npy(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise AttackInputError(f"{path} is not a .npy file (no NumPy header)")
        arr = np.load(path, allow_pickle=False)
    except AttackInputError:
        raise
    except Exception as exc:  # numpy raises ValueError, OSError, EOFError, ... for broken files
        raise AttackInputError(f"cannot read {path} as a .npy array: {exc}") from None
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[1] == 3 and arr.shape[-1] != 3:
        arr = np.moveaxis(arr, 1, -1)  # NCHW -> NHWC
    if arr.ndim != 4 or arr.shape[-1] != 3 or 0 in arr.shape:
        raise AttackInputError(f"{path}: expected images (N, H, W, 3); got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise AttackInputError(f"{path}: float images must lie in [0, 1]")
        arr = np.round(arr * 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise AttackInputError(f"{path}: dtype must be uint8 or float in [0, 1]; got {arr.dtype}")
    return arr, _labels_beside(path, len(arr))


def _load_folder(folder: Path, size: int, limit: int | None) -> tuple[list[np.ndarray] | np.ndarray, np.ndarray | None]:
    from PIL import Image

    from signwatch.data.gtsrb import GTSRBFormatError, find_annotation_files, load_gtsrb

    try:
        find_annotation_files(folder)
        is_gtsrb = True
    except (GTSRBFormatError, ValueError):
        is_gtsrb = False
    if is_gtsrb:  # labelled: the whole image, as the service sees it (no crop to the ROI)
        try:
            images, labels = load_gtsrb(folder, size=size, crop=False, limit=limit)
        except (GTSRBFormatError, ValueError) as exc:
            raise AttackInputError(str(exc)) from None
        if not len(images):
            raise AttackInputError(f"no images listed in the GTSRB annotations under {folder}")
        return images, labels
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise AttackInputError(f"no PNG/JPEG/PPM images in {folder}")
    images = []
    for path in files[:limit]:
        try:
            with Image.open(path) as im:
                im.load()
                images.append(np.array(im.convert("RGB"), dtype=np.uint8))
        except Exception as exc:  # PIL raises many types for corrupt files
            raise AttackInputError(f"corrupt or unreadable image {path}: {exc}") from None
    return images, None


def load_inputs(images: Path | None, count: int | None, seed: int, size: int,
                ) -> tuple["torch.Tensor", np.ndarray | None, str]:  # noqa: F821
    """The clean images as (B, 3, size, size) in [0, 1], their labels (or None) and a description."""
    from signwatch.model.core import to_unit_tensor

    if images is None:
        from signwatch.data.render import render_array

        n = DEFAULT_COUNT if count is None else count
        arr, labels = render_array(n, seed=seed, split="test", size=size, workers=1, progress=False)
        return to_unit_tensor(arr, size), labels, f"rendered test split, seed {seed}"
    if not images.exists():
        raise AttackInputError(f"{images} does not exist")
    if images.is_dir():
        arr, labels = _load_folder(images, size, count)
    elif images.suffix.lower() == ".npy":
        arr, labels = _load_npy(images)
        arr, labels = arr[:count], (None if labels is None else labels[:count])
    else:
        raise AttackInputError(f"{images}: give a folder of images or a .npy array")
    return to_unit_tensor(list(arr), size), labels, str(images)


_HELP = {
    "method": "pgd (L-inf, iterative), fgsm (one step) or deepfool (minimal L2).",
    "target": "Class the images should be taken for: an id (14) or a label of the model (Stop, \"class_3\"); "
              "default: the class labelled Stop, where the model has one.",
    "eps": "L-inf budget in [0, 1] pixel units (8/255 = 0.0314); not used by deepfool.",
    "steps": "Iterations (default: pgd 10, deepfool 50; fgsm is one step).",
    "step": "PGD step size (default 2.5 * eps / steps).",
    "overshoot": "DeepFool overshoot (>= 0).",
    "count": f"Images to attack (default {DEFAULT_COUNT} rendered, or all given).",
    "seed": "Seed (>= 0) of the rendered test set and of PGD's random start.",
    "out": "Folder for the images, adversarial.npy, labels.json, report.json.",
    "images": "Folder of PNG/JPEG/PPM images (or a GTSRB layout) or a .npy array, instead of rendering.",
    "weights": "Model weights: a signwatch safetensors file with its manifest, imported models too "
               "(default: the shipped model).",
    "batch_size": "Images per batch.",
    "device": "cpu or cuda (default: cpu).",
    "no_png": "Write only adversarial.npy, labels.json and report.json.",
    "json": "Print one JSON object instead of the summary.",
    "quiet": "No progress bars.",
}


@attack_app.callback(invoke_without_command=True)
def attack(
    method: Annotated[str, typer.Option(help=_HELP["method"])] = "pgd",
    target: Annotated[Optional[str], typer.Option(help=_HELP["target"], show_default=False)] = None,
    eps: Annotated[float, typer.Option(help=_HELP["eps"])] = 8 / 255,
    steps: Annotated[Optional[int], typer.Option(help=_HELP["steps"])] = None,
    step: Annotated[Optional[float], typer.Option(help=_HELP["step"])] = None,
    overshoot: Annotated[float, typer.Option(help=_HELP["overshoot"])] = DEFAULT_OVERSHOOT,
    count: Annotated[Optional[int], typer.Option("--count", "-n", help=_HELP["count"])] = None,
    seed: Annotated[int, typer.Option(help=_HELP["seed"])] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help=_HELP["out"])] = Path("attacks"),
    images: Annotated[Optional[Path], typer.Option(help=_HELP["images"])] = None,
    weights: Annotated[Optional[Path], typer.Option(help=_HELP["weights"])] = None,
    batch_size: Annotated[int, typer.Option(help=_HELP["batch_size"])] = 64,
    device: Annotated[Optional[str], typer.Option(help=_HELP["device"])] = None,
    no_png: Annotated[bool, typer.Option("--no-png", help=_HELP["no_png"])] = False,
    as_json: Annotated[bool, typer.Option("--json", help=_HELP["json"])] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=_HELP["quiet"])] = False,
) -> None:
    """Attack COUNT test images towards TARGET and write the results to OUT."""
    from signwatch.attacks.methods import check_eps, run_attack
    from signwatch.attacks.report import AttackReport, save_attack
    from signwatch.attacks.targets import UnknownTarget, resolve_target
    from signwatch.data.classes import CLASS_NAMES
    from signwatch.model import load_model
    from signwatch.model.core import load_spec

    if method not in METHODS:
        raise _fail(f"--method must be one of {', '.join(METHODS)}; got {method!r}")
    for name, value, low in (("--steps", steps, 1), ("--count", count, 1), ("--batch-size", batch_size, 1),
                             ("--seed", seed, 0)):
        if value is not None and value < low:
            raise _fail(f"{name} must be at least {low}; got {value}")
    if not overshoot >= 0:
        raise _fail(f"--overshoot must be non-negative; got {overshoot}")
    if method != "deepfool":
        try:
            check_eps(eps)
        except ValueError as exc:
            raise _fail(f"--eps: {exc}") from None
    if step is not None and not step > 0:
        raise _fail(f"--step must be positive; got {step}")
    if out.exists() and not out.is_dir():
        raise _fail(f"--out {out} exists and is not a folder")
    if weights is not None and not weights.is_file():
        raise _fail(f"cannot load the model: model weights not found: {weights}")
    try:  # the manifest first: a wrong --target is refused before the weights are read
        target_id = resolve_target(load_spec(weights), target)
    except UnknownTarget as exc:
        raise _fail(f"--target: {exc}") from None
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(f"cannot load the model: {exc}") from None
    try:
        model, spec = load_model(weights, device=device or "cpu")
    except (FileNotFoundError, ValueError, RuntimeError, AssertionError) as exc:  # CUDA missing: AssertionError
        raise _fail(f"cannot load the model: {exc}") from None
    try:
        clean, labels, source = load_inputs(images, count, seed, spec.input_size)
    except AttackInputError as exc:
        raise _fail(str(exc)) from None
    if images is None and spec.class_names != CLASS_NAMES:
        labels = None  # rendered signs carry GTSRB class ids, which are not this model's classes
    dev = next(model.parameters()).device
    clean = clean.to(dev)
    used_steps = 1 if method == "fgsm" else (DEFAULT_STEPS[method] if steps is None else steps)
    result = run_attack(method, model, spec, clean, target=target_id, eps=eps, steps=used_steps, step=step,
                        seed=seed, overshoot=overshoot, batch_size=batch_size, quantize_result=True,
                        progress=not quiet)
    report = AttackReport.measure(model, spec, clean, result.adversarial, labels, target_id, method,
                                  None if method == "deepfool" else eps, used_steps)
    try:
        save_attack(out, clean, result.adversarial, report, images=not no_png, progress=not quiet)
    except OSError as exc:
        raise _fail(f"cannot write to {out}: {exc}") from None
    if as_json:
        typer.echo(json.dumps(report.summary() | {"source": source}))
    else:
        typer.echo(report.describe())
        typer.echo(f"  images from:             {source}")


if __name__ == "__main__":
    attack_app()
