"""Episodes: one violation per episode of a failing check, however many replicas run.

A check that starts failing is *claimed* by writing its episode record with
``set_value(..., if_absent=True)``, atomic in Redis: exactly one replica wins and publishes the
violation; the others (and later evaluations) only refresh ``last_failing``. When the check has
passed for ``resolve_after_s`` (no fixed cool-down), one replica claims the resolution the same
way, deletes the record and publishes the episode as resolved; a later failure opens a new
episode with a new violation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from signwatch.ports.state import Push, StateStore

RECORD_TTL_S = 7 * 86_400


@dataclass
class Episodes:
    state: StateStore
    endpoint: str
    resolve_after_s: float = 120.0

    def key(self, check: str, feature: str) -> str:
        return f"signwatch:episode:{self.endpoint}:{check}:{feature}"

    def get(self, check: str, feature: str) -> dict | None:
        raw = self.state.get_value(self.key(check, feature))
        return json.loads(raw) if raw else None

    def claim(self, check: str, feature: str, violation_id: str, now: float, iso_now: str) -> bool:
        record = {"check": check, "feature": feature, "violation_id": violation_id, "since": iso_now,
                  "since_ts": now, "last_failing": now}
        return self.state.set_value(self.key(check, feature), json.dumps(record), RECORD_TTL_S, if_absent=True)

    def refresh(self, record: dict, now: float) -> None:
        if now - record["last_failing"] >= 1.0:  # at most one write a second per check
            record = record | {"last_failing": now}
            self.state.set_value(self.key(record["check"], record["feature"]), json.dumps(record), RECORD_TTL_S)

    def release(self, check: str, feature: str) -> None:
        """Publishing the violation failed: free the claim so that the retry raises it again."""
        self.state.delete(self.key(check, feature))

    def resolve_if_due(self, record: dict, now: float) -> bool:
        if now - record["last_failing"] < self.resolve_after_s:
            return False
        token = f"{self.key(record['check'], record['feature'])}:resolved:{record['violation_id']}"
        if not self.state.set_value(token, "1", RECORD_TTL_S, if_absent=True):
            return False
        self.state.delete(self.key(record["check"], record["feature"]))
        self.state.apply_once(token + ":log", RECORD_TTL_S, [], [
            Push(self.resolved_key, json.dumps(record), 20, RECORD_TTL_S)])
        return True

    @property
    def resolved_key(self) -> str:
        return f"signwatch:resolved:{self.endpoint}"

    def recently_resolved(self) -> list[dict]:
        return [json.loads(r) for r in self.state.get_list(self.resolved_key)]
