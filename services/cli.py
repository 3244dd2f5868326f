"""The ``signwatch`` command line: serve the services, run the demo, manage the local stack.

It lives above both the library (``signwatch``) and the services (``signwatch_services``), as
does the demo: the library never imports the services, so the import graph runs one way only."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from signwatch.data.classes import NUM_CLASSES  # train and evaluate render GTSRB signs: one of each at least

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Serve, capture, monitor and explain a traffic-sign classifier.")


def _mount_subapps() -> None:
    from signwatch.attacks.cli import attack_app
    from signwatch.data.cli import data_app
    from signwatch.monitoring.cli import baseline_app, monitor_app
    from signwatch.stack.cli import stack_app

    app.add_typer(stack_app, name="stack", help="Local Kafka, Redis and S3 servers.")
    app.add_typer(data_app, name="data", help="Render the look-alike traffic-sign data set.")
    app.add_typer(attack_app, name="attack", help="Targeted adversarial images (default: Stop).")
    app.add_typer(baseline_app, name="baseline", help="Baselines for the monitor (SageMaker's shapes).")
    app.add_typer(monitor_app, name="monitor", help="The scheduled monitoring job over captured files.")
    from signwatch.debugger.cli import debugger_app
    app.add_typer(debugger_app, name="debugger", help="Recorded tensors: export them (smdebug layout).")
    from signwatch.model.cli import model_app
    app.add_typer(model_app, name="model", help="Import your model: SageMaker model.tar.gz, .pth, safetensors.")


class Service(str, Enum):
    inference = "inference"
    capture = "capture"
    monitor = "monitor"
    explainer = "explainer"
    all = "all"


def fail(message: str, code: int = 2) -> typer.Exit:
    """Say what is wrong in one line and exit non-zero: no traceback for a user's mistake."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def load_settings(**overrides):
    from signwatch.config import SettingsError, settings_for_command

    try:
        return settings_for_command(**overrides)
    except SettingsError as exc:
        raise fail(str(exc))


def open_ports_or_fail(settings):
    from signwatch.ports import UnsupportedURL
    from signwatch.ports.security import ServerRefused
    from signwatch.runtime import open_ports

    try:
        return open_ports(settings)
    except (UnsupportedURL, ServerRefused) as exc:
        raise fail(str(exc))


@app.command()
def serve(
    service: Service = typer.Argument(..., help="which service to run"),
    host: Optional[str] = typer.Option(None, help="bind address (default 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, help="inference port (default 8080)"),
) -> None:
    """Run one service, or all of them in one process, on the configured ports."""
    from signwatch.runtime import configure_logging
    from signwatch_services.runner import serve as run

    configure_logging()
    settings = load_settings(host=host, port=port)
    from signwatch.ports.security import ServerRefused
    from signwatch.serving.screening import ScreeningUnavailable

    open_ports_or_fail(settings).close()  # a bad URL is a one-line error, not a traceback
    try:
        run(service.value, settings)
    except (ServerRefused, ScreeningUnavailable) as exc:  # a wrong password or CA, no calibration: retrying
        raise fail(str(exc))                              # would not help


@app.command()
def demo(
    out: Path = typer.Option(Path("signwatch-demo"), help="output folder"),
    normal: int = typer.Option(120, min=1, max=100_000, help="clean images to send first"),
    adversarial: int = typer.Option(280, min=1, max=100_000, help="adversarial images (target Stop)"),
    seed: int = typer.Option(0, help="seed for rendering and attacks"),
) -> None:
    """The whole loop embedded in one process: serve, capture, monitor, attack, explain."""
    from signwatch_services.demo import run_demo
    from signwatch.runtime import configure_logging

    if adversarial <= normal:
        typer.echo(f"error: --adversarial ({adversarial}) must outnumber --normal ({normal}), or Stop "
                   "cannot pass the monitor's 50% share threshold", err=True)
        raise typer.Exit(2)
    configure_logging("WARNING")
    try:
        summary = run_demo(out, normal=normal, adversarial=adversarial, seed=seed)
    except TimeoutError as exc:
        typer.echo(f"error: the demo did not complete: {exc}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def train(
    out: Path = typer.Option(Path("models/signwatch-resnet18.safetensors"), help="weights to write"),
    epochs: int = typer.Option(6, min=1, max=1000),
    per_epoch: int = typer.Option(40_000, min=NUM_CLASSES, help="size of the rendered training pool"),
    input_size: int = typer.Option(64, help="64 (default) or 128, the reference's size"),
    batch_size: int = typer.Option(128, min=1),
    lr: float = typer.Option(3e-3, min=0),
    seed: int = typer.Option(0),
    workers: int = typer.Option(2, min=1, help="rendering processes"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)"),
    gtsrb: Optional[Path] = typer.Option(None, help="train on a real GTSRB copy (Final_Training/...)"),
    from_manifest: Optional[Path] = typer.Option(None, help="repeat the training recorded in a manifest"),
) -> None:
    """Train the ResNet18 on freshly rendered signs (or real GTSRB) and write safetensors + manifest."""
    from signwatch.data.gtsrb import GTSRBFormatError
    from signwatch.model.train import TrainConfig, load_config, train as run_training

    if input_size not in (32, 48, 64, 96, 128):
        raise fail("input size must be one of 32, 48, 64, 96, 128")
    if gtsrb is not None and not gtsrb.is_dir():
        raise fail(f"--gtsrb {gtsrb} is not a folder")
    try:
        cfg = load_config(from_manifest) if from_manifest else TrainConfig(
            epochs=epochs, per_epoch=per_epoch, batch_size=batch_size, lr=lr, input_size=input_size,
            seed=seed, workers=workers, gtsrb_root=str(gtsrb) if gtsrb else None)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise fail(f"cannot read the training config from {from_manifest}: {exc}")
    try:
        record = run_training(cfg, out, device=device)
    except GTSRBFormatError as exc:
        raise fail(f"not a usable GTSRB copy: {exc}", 1)
    typer.echo(json.dumps({"weights": str(out), "history": record["history"]}, indent=2))


@app.command()
def evaluate(
    weights: Optional[Path] = typer.Option(None, help="safetensors weights (default: shipped)"),
    count: int = typer.Option(2000, min=NUM_CLASSES, help="test images per variant"),
    seed: int = typer.Option(99, help="test-set seed (test split: never seen in training)"),
    variant: list[str] = typer.Option(["clean", "snow", "night", "fog"], help="variants to evaluate"),
    out: Path = typer.Option(Path("evaluation"), help="folder for confusion-matrix PNGs"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object keyed by variant"),
    device: Optional[str] = typer.Option(None),
) -> None:
    """Accuracy, per-class accuracy, calibration and confusion matrices, clean and under drift."""
    from signwatch.model import load_model
    from signwatch.model.evaluate import VARIANTS, evaluate as run_evaluation

    bad = [v for v in variant if v not in VARIANTS]
    if bad:
        typer.echo(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}", err=True)
        raise typer.Exit(2)
    try:
        model, spec = load_model(weights)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"cannot load model: {exc}", err=True)
        raise typer.Exit(1)
    results = run_evaluation(model, spec, count=count, seed=seed, variants=variant, out_dir=out, device=device)
    if as_json:
        typer.echo(json.dumps(results))
        return
    for name, r in results.items():
        typer.echo(f"{name:>6}: accuracy {r['accuracy']:.4f}  mean confidence {r['mean_confidence']:.4f}  "
                   f"ECE {r['ece']:.4f}  ({r.get('confusion_matrix_png', '')})")


saliency_app = typer.Typer(no_args_is_help=True, help="Saliency maps: faithfulness and speed.")
app.add_typer(saliency_app, name="saliency")


@saliency_app.command("evaluate")
def saliency_evaluate(
    count: int = typer.Option(256, min=8, max=20_000, help="clean test images"),
    seed: int = typer.Option(7, help="test-set seed"),
    weights: Optional[Path] = typer.Option(None, help="safetensors weights (default: shipped)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Pixel-perturbation faithfulness of FullGrad, input x gradient, Grad-CAM and random maps."""
    import torch

    from signwatch.data.render import render_array
    from signwatch.model import load_model, preprocess
    from signwatch.saliency.faithfulness import compare

    torch.manual_seed(seed)
    model, spec = load_model(weights)
    images, labels = render_array(count, seed=seed, split="test", size=spec.input_size, progress=not as_json)
    batch = preprocess(list(images), spec)
    with torch.no_grad():
        predicted = torch.cat([model(batch[i:i + 64]).argmax(1) for i in range(0, len(batch), 64)])
    keep = predicted == torch.from_numpy(labels)  # explain what the model got right
    if int(keep.sum()) == 0:
        typer.echo("the model classified none of the test images correctly", err=True)
        raise typer.Exit(1)
    table = compare(model, batch[keep], predicted[keep], seed=seed)
    result = {"images": int(keep.sum()), "model_version": spec.version, "methods": table}
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{int(keep.sum())} correctly classified clean test images ({spec.version})")
    typer.echo(f"{'method':<18}{'least 10% change':>18}{'most 10% drop':>16}{'deletion AUC':>14}")
    for name, row in table.items():
        typer.echo(f"{name:<18}{row['least_removed_change']['0.1']:>18.4f}"
                   f"{row['most_removed_drop']['0.1']:>16.4f}{row['deletion_auc']:>14.4f}")


_mount_subapps()

if __name__ == "__main__":
    app()
