"""Monitoring: baselines, windows shared by replicas, checks against the baseline (declared in ``registry``), incidents,
and the scheduled job over captured files (``signwatch monitor job``). See docs/monitoring.md.

``Monitor.observe(event) -> list[ViolationEvent]`` is the whole streaming monitor;
``read_snapshot(state, endpoint)`` is what a dashboard reads.
"""

from importlib import import_module

# Imported when first asked for (PEP 562): the scheduled job's workers import
# ``signwatch.monitoring.capture_counts`` without the monitor, the checks and scipy (0.4 s a process).
_WHERE = {"Baseline": "baseline", "Thresholds": "baseline", "suggest": "baseline", "CheckResult": "checks",
          "WindowCounts": "checks", "Features": "features", "features_of": "features", "Monitor": "monitor",
          "MonitorConfig": "monitor", "read_snapshot": "monitor", "snapshot_key": "monitor", "CHECKS": "registry",
          "run_checks": "registry"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
