"""Training the classifier on the rendered look-alike set (or a real GTSRB copy).

A pool of rendered training images (split "train") is drawn once and cached under ``.cache/``;
each epoch reshuffles it and jitters every batch (shift and scale), which on two CPU cores is
far cheaper than rendering afresh (rendering runs at ~150 images/s, training at ~100).
The test split is a different seed stream, never seen in training. CPU or CUDA is picked
automatically; on CUDA the forward runs under bf16 autocast.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from signwatch.data.render import RENDER_VERSION, render_array
from signwatch.model.core import ModelSpec, build_model, normalize, save_model


@dataclass
class TrainConfig:
    epochs: int = 6
    per_epoch: int = 40_000  # size of the rendered training pool
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    input_size: int = 64
    seed: int = 0
    val_count: int = 2_000
    workers: int = 2
    label_smoothing: float = 0.0
    gtsrb_root: str | None = None  # train on a real GTSRB copy instead of rendered images


def pick_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_batch(images: np.ndarray, spec: ModelSpec, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(images).to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    return normalize(x, spec).contiguous(memory_format=torch.channels_last)


CACHE = Path(".cache")


def training_pool(cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    if cfg.gtsrb_root:
        from signwatch.data.gtsrb import load_gtsrb

        return load_gtsrb(Path(cfg.gtsrb_root), size=cfg.input_size, crop=True, part="train", progress=True)
    name = f"train-r{RENDER_VERSION}-{cfg.input_size}px-seed{cfg.seed}-n{cfg.per_epoch}"
    images_file, labels_file = CACHE / f"{name}.images.npy", CACHE / f"{name}.labels.npy"
    if images_file.exists() and labels_file.exists():
        return np.load(images_file), np.load(labels_file)
    images, labels = render_array(cfg.per_epoch, seed=cfg.seed, split="train", size=cfg.input_size,
                                  workers=cfg.workers, progress=True)
    CACHE.mkdir(exist_ok=True)
    np.save(images_file, images)
    np.save(labels_file, labels)
    return images, labels


def jitter(x: torch.Tensor, gen: torch.Generator, max_shift: float = 0.08, scale=(0.9, 1.1)) -> torch.Tensor:
    """Random shift and scale per image (no flips: 19/20, 33/34, 38/39 are mirror images)."""
    b = x.shape[0]
    s = torch.empty(b).uniform_(*scale, generator=gen)
    t = torch.empty(b, 2).uniform_(-max_shift, max_shift, generator=gen) * 2
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
    theta[:, :, 2] = t
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: np.ndarray, spec: ModelSpec,
                   device: torch.device, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(model(to_batch(images[i:i + batch_size], spec, device)).float().cpu())
    return torch.cat(out)


def train(cfg: TrainConfig, out: Path, device: str | None = None) -> dict:
    dev = pick_device(device)
    torch.manual_seed(cfg.seed)
    spec = ModelSpec(input_size=cfg.input_size, version=f"resnet18-{cfg.input_size}px-seed{cfg.seed}")
    model = build_model(spec.num_classes, seed=cfg.seed).to(dev).to(memory_format=torch.channels_last)
    images, labels = training_pool(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15)
    val_x, val_y = render_array(cfg.val_count, seed=cfg.seed, split="val", size=cfg.input_size,
                                workers=cfg.workers, progress=False)
    history = []
    started = time.time()
    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        order = np.random.default_rng(cfg.seed + 1000 + epoch).permutation(len(images))
        model.train()
        bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        running = 0.0
        for n, i in enumerate(bar, 1):
            idx = order[i:i + cfg.batch_size]
            x = jitter(to_batch(images[idx], spec, dev), gen)
            y = torch.from_numpy(labels[idx]).to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler.last_epoch < scheduler.total_steps - 1:
                scheduler.step()
            running += float(loss.detach())
            bar.set_postfix(loss=f"{running / n:.3f}")
        val_acc = float((predict_logits(model, val_x, spec, dev).argmax(1).numpy() == val_y).mean())
        history.append({"epoch": epoch + 1, "loss": round(running / max(1, n), 4), "val_accuracy": round(val_acc, 4)})
        tqdm.write(f"epoch {epoch + 1}: loss {running / max(1, n):.4f}, val accuracy {val_acc:.4f}")
    model = model.to(memory_format=torch.contiguous_format).eval().cpu()
    record = {
        "training": asdict(cfg) | {"device": str(dev), "seconds": round(time.time() - started, 1),
                                   "torch": torch.__version__},
        "data_seeds": {"train_pool": cfg.seed, "val": cfg.seed, "render_version": RENDER_VERSION,
                       "splits": "seeds mix with the split name: test images never repeat train ones"},
        "history": history,
    }
    spec = ModelSpec(input_size=cfg.input_size, version=spec.version, extra=record)
    save_model(model, spec, out)
    return record


def load_config(path: Path) -> TrainConfig:
    """The training config recorded in a manifest: ``signwatch train --from-manifest`` reproduces it."""
    return TrainConfig(**{k: v for k, v in json.loads(Path(path).read_text())["extra"]["training"].items()
                          if k in TrainConfig.__dataclass_fields__})
