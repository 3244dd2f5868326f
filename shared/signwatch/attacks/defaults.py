"""The attacks' names and defaults, importable without torch (the command line reads them)."""

METHODS = ("pgd", "fgsm", "deepfool")
DEFAULT_TARGET = 14  # Stop
DEFAULT_EPS = 8 / 255
DEFAULT_STEPS = {"pgd": 10, "fgsm": 1, "deepfool": 50}
DEFAULT_OVERSHOOT = 0.02
