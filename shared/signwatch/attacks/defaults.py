"""The attacks' names and defaults, importable without torch (the command line reads them)."""

METHODS = ("pgd", "fgsm", "deepfool")
# The class the attacks provoke unless told otherwise, by label: class 14 of the GTSRB model; a
# model without a "Stop" class needs a target named (signwatch.attacks.targets.resolve_target).
DEFAULT_TARGET_LABEL = "Stop"
DEFAULT_EPS = 8 / 255
DEFAULT_STEPS = {"pgd": 10, "fgsm": 1, "deepfool": 50}
DEFAULT_OVERSHOOT = 0.02
