"""An isolated virtual environment with real smdebug from PyPI, made once and kept in
``.cache/smdebug-venv-<key>`` (gitignored), the key naming the pinned versions, so reruns are fast.

smdebug 1.0.34 (its last release) needs numpy < 2 and protobuf <= 3.20.3, and imports requests,
pandas and psutil without declaring them; it needs no torch. The project never imports it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
PINS = ("smdebug==1.0.34", "protobuf==3.20.3", "numpy==1.26.4", "boto3==1.35.99", "requests==2.32.3",
        "pandas==2.2.3", "psutil==6.1.1")
READER = Path(__file__).with_name("reader.py")


def venv_dir() -> Path:
    key = hashlib.sha256(" ".join(PINS).encode()).hexdigest()[:12]
    return PROJECT / ".cache" / f"smdebug-venv-{key}"


def _make(target: Path) -> None:
    """python -m venv with the project's interpreter (else a system python3); where ensurepip is
    missing there (Debian's python3 without python3-venv), a venv without pip that the project's
    own pip installs into (``pip --python``)."""
    made, errors = None, []
    for python in dict.fromkeys(p for p in (sys.executable, shutil.which("python3")) if p):
        for without_pip in (False, True):
            shutil.rmtree(target, ignore_errors=True)
            args = [python, "-m", "venv", *(["--without-pip"] if without_pip else []), str(target)]
            done = subprocess.run(args, capture_output=True, text=True)
            if done.returncode == 0:
                made = without_pip
                break
            errors.append(f"{' '.join(args)}: {done.stderr.strip()[-300:]}")
        if made is not None:
            break
    if made is None:
        raise RuntimeError("cannot create a virtual environment: " + "; ".join(errors))
    venv_python = str(target / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", venv_python] if made else [venv_python, "-m", "pip"]
    done = subprocess.run([*pip, "install", "--quiet", "--disable-pip-version-check", *PINS],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(PINS)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    check = subprocess.run([venv_python, "-c", "import smdebug.trials, pandas, psutil, requests"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"smdebug does not import in {target}:\n{check.stderr[-2000:]}")


def smdebug_python() -> Path:
    """The venv's python, made first if needed (under a lock: parallel test runs wait for one build)."""
    target = venv_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    ready = target / ".ready"
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ready.exists():
            _make(target)
            ready.write_text(" ".join(PINS) + "\n")
    return target / "bin" / "python"


def read_with_smdebug(trial_path: str, out: Path, env: dict[str, str] | None = None, timeout_s: float = 300):
    """(trial.json as a dict, values.npz) of what real smdebug reads at ``trial_path``."""
    import json

    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    # A finished trial: smdebug would otherwise wait a second before its last refresh.
    run_env |= {"SMDEBUG_TRAINING_END_DELAY_REFRESH": "0"} | (env or {})
    done = subprocess.run([str(smdebug_python()), str(READER), trial_path, str(out)], capture_output=True,
                          text=True, timeout=timeout_s, env=run_env, cwd=out)
    assert done.returncode == 0, f"smdebug could not read {trial_path}:\n{done.stderr[-4000:]}"
    return json.loads((out / "trial.json").read_text()), np.load(out / "values.npz")
