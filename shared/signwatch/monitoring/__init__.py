"""Monitoring: baselines, windows shared by replicas, checks against the baseline (declared in ``registry``), incidents,
and the scheduled job over captured files (``signwatch monitor job``). See docs/monitoring.md.

``Monitor.observe(event) -> list[ViolationEvent]`` is the whole streaming monitor;
``read_snapshot(state, endpoint)`` is what a dashboard reads.
"""

from signwatch.monitoring.baseline import Baseline, Thresholds, suggest
from signwatch.monitoring.checks import CheckResult, WindowCounts
from signwatch.monitoring.features import Features, features_of
from signwatch.monitoring.monitor import Monitor, MonitorConfig, read_snapshot, snapshot_key
from signwatch.monitoring.registry import CHECKS, run_checks

__all__ = ["CHECKS", "Baseline", "CheckResult", "Features", "Monitor", "MonitorConfig", "Thresholds", "WindowCounts",
           "features_of", "read_snapshot", "run_checks", "snapshot_key", "suggest"]
