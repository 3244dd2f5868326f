"""Opening the three ports from settings: shared by every composition root."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from signwatch.config import Settings
from signwatch.ports import open_bus, open_state, open_store
from signwatch.ports.security import Credentials
from signwatch.ports.bus import EventBus
from signwatch.ports.state import StateStore
from signwatch.ports.store import ObjectStore

EMBEDDED_BUS = "memory://"
EMBEDDED_STATE = "memory://"


def embedded_store_url(root: Path | None = None) -> str:
    return (Path(root or Path.cwd()) / "signwatch-data").resolve().as_uri()


@dataclass
class Ports:
    bus: EventBus
    store: ObjectStore
    state: StateStore

    def close(self) -> None:
        self.bus.close()
        self.state.close()


def open_ports(settings: Settings) -> Ports:
    credentials = Credentials.from_settings(settings)
    return Ports(
        bus=open_bus(settings.bus_url or EMBEDDED_BUS, credentials),
        store=open_store(settings.store_url or embedded_store_url(), credentials),
        state=open_state(settings.state_url or EMBEDDED_STATE, credentials),
    )


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kafka-python logs every reconnect attempt at INFO/WARNING; keep the services' logs readable.
    logging.getLogger("kafka").setLevel(logging.ERROR)
