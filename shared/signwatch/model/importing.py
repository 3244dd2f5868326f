"""``signwatch model import``: a user's trained weights into signwatch's safetensors + manifest.

Sources: a SageMaker PyTorch ``model.tar.gz`` (the first ``*.pth``/``*.pt``/``*.safetensors`` in
it outside ``code/``, or ``member``), a bare ``.pth``/``.pt`` state dict (also wrapped as
``{"state_dict": ...}``, or with DataParallel's ``module.`` or ``torch.compile``'s ``_orig_mod.``
prefix), or a safetensors file; each from a local path, ``file://`` or ``s3://`` URL. The format is
read from the bytes, not the name.

Unpickling is always ``torch.load(weights_only=True)``: tensors and plain containers only. A file
that needs code to load (a pickled ``nn.Module``, a TorchScript archive) is refused with the
command that exports a state dict instead. The architecture and the class count are inferred from
the keys and shapes (``signwatch.model.architectures``) unless given; what does not fit is listed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import struct
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import torch

from signwatch.model import architectures
from signwatch.model.core import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, file_sha256, manifest_path, save_model

log = logging.getLogger(__name__)

MAX_SOURCE_BYTES = 4 * 1024**3  # the largest registered model (VGG19, float32) is 0.6 GB
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile
MAX_LABEL_LENGTH = 200
EXPORT_HINT = ("signwatch loads weights only, never code: export a state dict where the model is defined, "
               "`torch.save(model.state_dict(), 'model.pth')`, and import that")
LISTED = 8  # keys listed per kind in an error message


class ModelImportError(ValueError):
    """The source cannot be imported; the message says why and what to do."""


@dataclass(frozen=True)
class ImportOptions:
    architecture: str | None = None
    num_classes: int | None = None
    labels: str | None = None  # a file (local, file:// or s3://): one label per line, or JSON
    input_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    version: str | None = None
    member: str | None = None  # the weights' file inside a tar.gz

    def digest(self) -> str:
        """A key for the options that shape the output (the import cache's)."""
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True, default=list).encode()).hexdigest()[:16]


@dataclass
class Source:
    uri: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


# ---- reading the source -------------------------------------------------------------------------
def read_source(uri: str, read_s3=None, max_bytes: int = MAX_SOURCE_BYTES) -> Source:
    """The bytes behind a path, ``file://`` or ``s3://`` URL. ``read_s3(url) -> bytes`` reads an
    ``s3://`` URL with the caller's store settings and credentials (``signwatch.model.remote``)."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if read_s3 is None:
            raise ModelImportError(f"{uri}: no object store configured to read s3:// URLs from")
        try:
            data = read_s3(uri)
        except KeyError:
            raise ModelImportError(f"{uri}: no such object") from None
        except Exception as exc:  # noqa: BLE001 - the store's errors are many; say which
            raise ModelImportError(f"{uri}: cannot read it: {type(exc).__name__}: {exc}") from None
        if len(data) > max_bytes:
            raise ModelImportError(f"{uri}: {len(data)} bytes is over the {max_bytes}-byte limit")
        return Source(uri, data)
    if parsed.scheme not in ("", "file"):
        raise ModelImportError(f"{uri}: give a path, a file:// or an s3:// URL")
    path = Path(parsed.path if parsed.scheme == "file" else uri).expanduser()
    if not path.is_file():
        raise ModelImportError(f"{path}: no such file")
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelImportError(f"{path}: {size} bytes is over the {max_bytes}-byte limit")
    return Source(uri, path.read_bytes())


def _is_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    # The header's length, then its JSON: a truncated file still looks like safetensors, so that
    # loading it says "damaged safetensors" rather than "not a model file".
    (n,) = struct.unpack("<Q", data[:8])
    return n >= 2 and data[8:9] == b"{"


def _is_torchscript(zf: zipfile.ZipFile) -> bool:
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in zf.namelist())


def _weights_member(tar: tarfile.TarFile, wanted: str | None, uri: str) -> tarfile.TarInfo:
    files = [m for m in tar.getmembers() if m.isfile()]
    if wanted is not None:
        norm = str(PurePosixPath(wanted.lstrip("./")))
        found = next((m for m in files if str(PurePosixPath(m.name.lstrip("./"))) == norm), None)
        if found is None:
            raise ModelImportError(f"{uri}: no member {wanted!r}; it holds {', '.join(m.name for m in files[:20])}")
        return found
    candidates = [m for m in files if m.name.lower().endswith(WEIGHT_SUFFIXES)
                  and "code" not in PurePosixPath(m.name.lstrip("./")).parts[:-1]]
    if not candidates:
        raise ModelImportError(f"{uri}: no *.pth, *.pt or *.safetensors in the archive (it holds "
                               f"{', '.join(m.name for m in files[:20]) or 'no files'}); name one with --member")
    return candidates[0]


def unpack(source: Source, member: str | None = None) -> tuple[bytes, str, str | None]:
    """(the weights' bytes, their format, the tar member they came from)."""
    data = source.data
    if data[:2] == b"\x1f\x8b" or (len(data) > 262 and data[257:262] == b"ustar"):
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                m = _weights_member(tar, member, source.uri)
                if m.size > MAX_SOURCE_BYTES:
                    raise ModelImportError(f"{source.uri}: member {m.name} is over the size limit")
                inner = tar.extractfile(m).read()  # read in memory: nothing is extracted to disk
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ModelImportError(f"{source.uri}: not a readable tar.gz: {exc}") from None
        _, fmt, _ = unpack(Source(f"{source.uri}!{m.name}", inner))
        return inner, fmt, m.name
    if member is not None:
        raise ModelImportError(f"{source.uri}: --member applies to a tar.gz archive only")
    if _is_safetensors(data):
        return data, "safetensors", None
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                if _is_torchscript(zf):
                    raise ModelImportError(
                        f"{source.uri} is a TorchScript archive (code and weights). {EXPORT_HINT}; from "
                        "TorchScript: `torch.save(torch.jit.load(path).state_dict(), 'model.pth')`")
        except zipfile.BadZipFile as exc:
            raise ModelImportError(f"{source.uri}: a damaged archive: {exc}") from None
        return data, "torch", None
    if data[:1] == b"\x80":  # a pickle protocol opcode: torch's legacy (pre-1.6) format
        return data, "torch", None
    raise ModelImportError(f"{source.uri}: not a model file (expected a tar.gz, a PyTorch .pth/.pt or safetensors)")


# ---- the state dict ------------------------------------------------------------------------------
def _tensors_only(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_state(data: bytes, fmt: str, uri: str) -> dict[str, torch.Tensor]:
    """The state dict in ``data``, unwrapped and with wrapper prefixes removed."""
    if fmt == "safetensors":
        from safetensors.torch import load as load_safetensors

        try:
            obj = load_safetensors(data)
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ModelImportError(f"{uri}: damaged safetensors: {exc}") from None
    else:
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            detail = str(exc).split("\n")
            why = next((line.strip() for line in detail if "Unsupported global" in line), detail[0][:200])
            raise ModelImportError(f"{uri} holds a pickled object that needs code to load ({why}). {EXPORT_HINT}") from None
        except Exception as exc:  # noqa: BLE001 - truncated or damaged files raise many types
            raise ModelImportError(f"{uri}: cannot read it as PyTorch weights: {type(exc).__name__}: {exc}") from None
    for _ in range(3):  # {"state_dict": {...}} and friends, possibly nested once or twice
        if _tensors_only(obj) or not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not _tensors_only(obj):
        kind = type(obj).__name__
        keys = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:LISTED] if isinstance(obj, dict) else []
        raise ModelImportError(f"{uri}: expected a state dict (names to tensors), got a {kind}"
                               + (f" with non-tensor entries {keys}" if keys else "") + f". {EXPORT_HINT}")
    state = {}
    for key, value in obj.items():
        for prefix in PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def _diff(state: dict[str, torch.Tensor], reference: dict[str, tuple[int, ...]]) -> tuple[list, list, list]:
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    mismatched = [(k, tuple(state[k].shape), reference[k]) for k in reference
                  if k in state and tuple(state[k].shape) != reference[k]]
    return missing, unexpected, mismatched


def _listed(items: list[str], what: str) -> str:
    if not items:
        return ""
    more = f" and {len(items) - LISTED} more" if len(items) > LISTED else ""
    return f"\n  {len(items)} {what}: {'; '.join(items[:LISTED])}{more}"


def describe_mismatch(name: str, state: dict, reference: dict) -> str:
    missing, unexpected, mismatched = _diff(state, reference)
    return (_listed(missing, "missing keys") + _listed(unexpected, "unexpected keys")
            + _listed([f"{k} is {list(got)}, {name} has {list(want)}" for k, got, want in mismatched],
                      "shape mismatches"))


def _num_classes(state: dict, arch: architectures.Architecture) -> int | None:
    head = state.get(arch.head)
    return int(head.shape[0]) if head is not None and head.dim() == 2 else None


def check_state(state: dict[str, torch.Tensor], architecture: str, num_classes: int) -> None:
    """Raise ``ModelImportError`` listing what does not fit ``architecture`` with ``num_classes``."""
    reference = architectures.reference_shapes(architecture, num_classes)
    if any(_diff(state, reference)):
        raise ModelImportError(f"the weights do not fit {architecture} with {num_classes} classes:"
                               + describe_mismatch(architecture, state, reference))


def infer_architecture(state: dict[str, torch.Tensor], architecture: str | None = None,
                       num_classes: int | None = None) -> tuple[str, int]:
    """(architecture, class count) the state dict is, from its keys and shapes."""
    if architecture is not None:
        try:
            arch = architectures.get(architecture)
        except architectures.UnknownArchitecture as exc:
            raise ModelImportError(str(exc)) from None
        n = num_classes or _num_classes(state, arch)
        if n is None:
            raise ModelImportError(f"no classification head {arch.head!r} in the weights to count the classes; "
                                   "pass --num-classes" + describe_mismatch(arch.name, state,
                                                                           architectures.reference_shapes(arch.name, 2)))
        check_state(state, arch.name, n)
        return arch.name, n
    candidates = [(a, _num_classes(state, a)) for a in architectures.ARCHITECTURES.values()
                  if _num_classes(state, a) and any(k.startswith(a.marker) for k in state)]
    if num_classes is not None:
        candidates = [(a, num_classes) for a, _ in candidates]
    exact, closest = [], None
    for arch, n in candidates:
        reference = architectures.reference_shapes(arch.name, n)
        missing, unexpected, mismatched = _diff(state, reference)
        distance = len(missing) + len(unexpected) + len(mismatched)
        if distance == 0:
            exact.append((arch.name, n))
        elif closest is None or distance < closest[0]:
            closest = (distance, arch.name, n, reference)
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        raise ModelImportError(f"the weights fit several architectures ({', '.join(a for a, _ in exact)}); "
                               "name one with --architecture")
    if closest is None:
        raise ModelImportError("the weights match none of the architectures signwatch serves "
                               f"({', '.join(architectures.FAMILIES)} families; keys start "
                               f"{', '.join(list(state)[:3])}); see docs/your-model.md")
    _, name, n, reference = closest
    raise ModelImportError(f"the weights match no architecture exactly; the closest is {name} with {n} classes:"
                           + describe_mismatch(name, state, reference)
                           + "\n  (pass --architecture to check against another)")


# ---- labels --------------------------------------------------------------------------------------
def parse_labels(data: bytes, uri: str, num_classes: int) -> tuple[str, ...]:
    """One label per line, or JSON: a list, or a map from class id to label."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ModelImportError(f"labels {uri}: not UTF-8 text") from None
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            obj = json.loads(stripped)
        except ValueError as exc:
            raise ModelImportError(f"labels {uri}: not valid JSON: {exc}") from None
        if isinstance(obj, dict):
            try:
                by_id = {int(k): v for k, v in obj.items()}
            except ValueError:
                raise ModelImportError(f"labels {uri}: a JSON map's keys must be class ids (0..{num_classes - 1})") from None
            if sorted(by_id) != list(range(num_classes)):
                raise ModelImportError(f"labels {uri}: the map must name every class id 0..{num_classes - 1} once, "
                                       f"it names {len(by_id)}")
            labels = [by_id[i] for i in range(num_classes)]
        elif isinstance(obj, list):
            labels = obj
        else:
            raise ModelImportError(f"labels {uri}: JSON must be a list or an id -> label map")
    else:
        labels = [line.strip() for line in text.splitlines()]
        while labels and not labels[-1]:
            labels.pop()
    labels = [str(v).strip() if isinstance(v, (str, int)) else None for v in labels]
    if len(labels) != num_classes:
        raise ModelImportError(f"labels {uri}: {len(labels)} labels for a model with {num_classes} classes")
    bad = [i for i, v in enumerate(labels) if not v or len(v) > MAX_LABEL_LENGTH]
    if bad:
        raise ModelImportError(f"labels {uri}: labels must be 1-{MAX_LABEL_LENGTH} characters; not so at ids {bad[:LISTED]}")
    seen: dict[str, int] = {}
    for i, v in enumerate(labels):
        if v in seen:
            raise ModelImportError(f"labels {uri}: {v!r} names both class {seen[v]} and class {i}")
        seen[v] = i
    return tuple(labels)


# ---- the import ----------------------------------------------------------------------------------
def probe(model: torch.nn.Module, spec: ModelSpec) -> dict:
    """One forward on random images (the logits' shape, finite) and FullGrad's completeness on one."""
    from signwatch.saliency.fullgrad import fullgrad

    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, spec.input_size, spec.input_size, generator=generator)
    from signwatch.model.core import normalize

    with torch.inference_mode():
        logits = model(normalize(x, spec))
    if tuple(logits.shape) != (2, spec.num_classes) or not torch.isfinite(logits).all():
        raise ModelImportError(f"the probe forward gave logits of shape {tuple(logits.shape)} "
                               f"(finite: {bool(torch.isfinite(logits).all())}), expected (2, {spec.num_classes})")
    result = fullgrad(model, normalize(x[:1], spec), warn_above=float("inf"))
    return {"logits_shape": list(logits.shape), "seconds": round(time.perf_counter() - started, 3),
            "fullgrad_completeness_rel_error": float(result.max_completeness_error)}


def import_model(source: Source, out: Path, options: ImportOptions = ImportOptions(), read_s3=None) -> dict:
    """Write ``out`` (safetensors, float32) and its manifest; return the summary."""
    data, fmt, member = unpack(source, options.member)
    state = load_state(data, fmt, source.uri if member is None else f"{source.uri}!{member}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    name, n = infer_architecture(state, options.architecture, options.num_classes)
    arch = architectures.get(name)
    if options.labels is not None:
        labels_source = read_source(options.labels, read_s3, max_bytes=16 * 1024 * 1024)
        labels = parse_labels(labels_source.data, options.labels, n)
    else:
        labels = tuple(f"class_{i}" for i in range(n))
    size = options.input_size or arch.input_size
    if not 8 <= size <= 1024:
        raise ModelImportError(f"--input-size must be 8 to 1024 pixels, got {size}")
    mean, std = options.mean or IMAGENET_MEAN, options.std or IMAGENET_STD
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ModelImportError("--mean and --std take three values each (R,G,B), std positive")
    source_sha = source.sha256
    spec = ModelSpec(architecture=name, input_size=size, mean=tuple(mean), std=tuple(std), class_names=labels,
                     version=options.version or f"{name}-{source_sha[:12]}")
    model = architectures.build(name, n, state)
    checked = probe(model, spec)
    record = {"uri": source.uri, "sha256": source_sha, "format": fmt, "member": member}
    save_model(model, spec, out, half=False, source=record)
    manifest = json.loads(manifest_path(out).read_text())
    return {
        "out": str(out), "manifest": str(manifest_path(out)), "architecture": name, "family": arch.family,
        "num_classes": n, "labels": list(labels[:5]) + (["..."] if n > 5 else []), "input_size": size,
        "mean": list(mean), "std": list(std), "version": spec.version, "sha256": manifest["sha256"],
        "source": record, "parameters": sum(v.numel() for v in state.values() if v.is_floating_point()),
        "fullgrad": "exact" if arch.fullgrad_exact else "approximate", "probe": checked,
    }


def import_cached(uri: str, options: ImportOptions, cache_dir: Path, read_s3=None) -> Path:
    """The imported weights for ``uri``, kept in ``cache_dir/imported/<source sha256>-<options>/``
    so that a restart (or a replica on the same volume) imports once."""
    source = read_source(uri, read_s3)
    folder = Path(cache_dir).expanduser() / "imported" / f"{source.sha256}-{options.digest()}"
    out = folder / "model.safetensors"
    if out.exists() and manifest_path(out).exists():
        try:
            meta = json.loads(manifest_path(out).read_text())
            if meta.get("sha256") == file_sha256(out):
                log.info("model %s: imported before, at %s", uri, out)
                return out
        except ValueError:
            pass
    tmp = folder.with_name(folder.name + f".partial-{time.time_ns()}")
    summary = import_model(source, tmp / "model.safetensors", options, read_s3)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(folder)  # atomic: a concurrent replica either wins or finds it done
    except OSError:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        if not out.exists():
            raise
    log.info("model %s: imported %s (%d classes, %s px) to %s", uri, summary["architecture"],
             summary["num_classes"], summary["input_size"], out)
    return out
