"""A circuit breaker per provider × model, shared by every Lambda through the State table.

Reads go through a short in-memory cache (one Query for every circuit, at most every
`cache_ttl_s`, run beside the request's other first-phase reads), so a healthy model costs no
round trip. Writes happen on failures, on state changes, and for successes at most once per
`cache_ttl_s` per environment (they are tallied in memory and flushed beside the periodic read):
- closed: calls are counted in a fixed window of `window_s`. The circuit opens for `cooldown_s`
  when, in one window, at least `min_failures` calls failed and they are at least
  `failure_ratio` of the calls counted (one conditional write decides who opened it). A ratio,
  not a bare count: under heavy traffic a model failing 20 % of calls is flaky, not down, and
  retries and fallbacks serve it better than shunning it.
- open: calls to the model are skipped (the chain moves to its next hop) until the cooldown ends.
- half-open (open, cooldown over): exactly one caller wins a conditional claim and probes; its
  success closes the circuit, its failure re-opens it for another cooldown. Everyone else keeps
  skipping. A probe that dies without a verdict frees the claim after `probe_lease_s`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from aigateway.errors import CircuitOpen
from aigateway.ids import new_id
from aigateway.observability import count, logger
from aigateway.store.dynamo import Item
from aigateway.store.repos import Circuits

State = Literal["closed", "open", "half_open"]
Admission = Literal["closed", "probe"]


@dataclass(frozen=True)
class BreakerSettings:
    min_failures: int = 5
    failure_ratio: float = 0.5
    window_s: float = 30.0
    cooldown_s: float = 20.0
    probe_lease_s: float = 30.0
    cache_ttl_s: float = 2.0


@dataclass(frozen=True)
class CircuitView:
    circuit: str
    state: State
    failures: int
    successes: int
    open_until_ms: int | None

    @classmethod
    def of(cls, item: Item, now_ms: int) -> CircuitView:
        open_until = int(item["open_until_ms"]) if item.get("open_until_ms") is not None else None
        state: State = "closed"
        if item.get("circuit_state") == "open":
            state = "open" if open_until is not None and now_ms < open_until else "half_open"
        return cls(str(item["sk"]), state, int(item.get("failures", 0)), int(item.get("successes", 0)), open_until)

    def to_json(self) -> dict[str, Any]:
        return {
            "circuit": self.circuit,
            "state": self.state,
            "failures_in_window": self.failures,
            "successes_in_window": self.successes,
            "open_until_ms": self.open_until_ms,
        }


def circuit_id(provider: str, model: str) -> str:
    return f"{provider}#{model}"


class CircuitBreaker:
    def __init__(self, circuits: Circuits, settings: BreakerSettings | None = None):
        self.circuits = circuits
        self.settings = settings or BreakerSettings()
        self._items: dict[str, Item] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()
        self._successes: dict[str, int] = {}  # tallied here, flushed with the next refresh

    # -- reads ---------------------------------------------------------------------------------

    def refresh(self, *, force: bool = False) -> None:
        """Re-reads every circuit if the in-memory copy is older than `cache_ttl_s`."""
        if not force and time.monotonic() - self._loaded_at < self.settings.cache_ttl_s:
            return
        with self._lock:
            pending, self._successes = self._successes, {}
        now_ms = int(time.time() * 1000)
        for circuit, n in pending.items():
            self._count(circuit, failures=0, successes=n, now_ms=now_ms)
        items = self.circuits.all()
        with self._lock:
            self._items = {str(i["sk"]): i for i in items}
            self._loaded_at = time.monotonic()

    def view(self, circuit: str, now_ms: int) -> CircuitView:
        with self._lock:
            item = self._items.get(circuit)
        if item is None:
            return CircuitView(circuit, "closed", 0, 0, None)
        return CircuitView.of(item, now_ms)

    def views(self, now_ms: int) -> list[CircuitView]:
        """Every circuit, read fresh (for /v1/health)."""
        self.refresh(force=True)
        with self._lock:
            items = list(self._items.values())
        return sorted((CircuitView.of(i, now_ms) for i in items), key=lambda v: v.circuit)

    # -- the call's side -----------------------------------------------------------------------

    def admit(self, circuit: str, now_ms: int) -> tuple[Admission, str | None]:
        """May this call go to the model? ("closed" | "probe", probe id); raises CircuitOpen."""
        view = self.view(circuit, now_ms)
        if view.state == "closed":
            return "closed", None
        if view.state == "open":
            wait_s = max(0.0, ((view.open_until_ms or now_ms) - now_ms) / 1000)
            raise CircuitOpen(f"{circuit} is failing; its circuit is open", retry_after_s=wait_s)
        probe_id = new_id()
        lease_ms = int(self.settings.probe_lease_s * 1000)
        if self.circuits.claim_probe(circuit, probe_id, now_ms=now_ms, lease_ms=lease_ms):
            logger().info("circuit half-open: probing", extra={"circuit": circuit})
            return "probe", probe_id
        raise CircuitOpen(f"{circuit} is being probed; its circuit stays open until the probe answers")

    def succeeded(self, circuit: str, admission: Admission, probe_id: str | None, now_ms: int) -> None:
        """A model answered. Tallied in memory; a probe's success closes the circuit at once."""
        if admission == "closed":
            with self._lock:
                self._successes[circuit] = self._successes.get(circuit, 0) + 1
        if (
            admission == "probe"
            and probe_id is not None
            and self.circuits.end_probe(circuit, probe_id, now_ms=now_ms, reopen_until_ms=None)
        ):
            self._transition(circuit, "closed", now_ms)

    def failed(self, circuit: str, admission: Admission, probe_id: str | None, now_ms: int) -> None:
        """A failure that counts against the model (policy.breaker)."""
        s = self.settings
        if admission == "probe" and probe_id is not None:
            until = now_ms + int(s.cooldown_s * 1000)
            if self.circuits.end_probe(circuit, probe_id, now_ms=now_ms, reopen_until_ms=until):
                self._transition(circuit, "open", now_ms, reason="probe failed")
            return
        with self._lock:  # this environment's unflushed successes go with the failure
            successes = self._successes.pop(circuit, 0)
        item = self._count(circuit, failures=1, successes=successes, now_ms=now_ms)
        failures, calls = int(item.get("failures", 0)), int(item.get("failures", 0)) + int(item.get("successes", 0))
        tripped = failures >= s.min_failures and failures >= s.failure_ratio * calls
        if tripped and item.get("circuit_state") != "open":
            until = now_ms + int(s.cooldown_s * 1000)
            if self.circuits.open(circuit, now_ms=now_ms, until_ms=until):
                reason = f"{failures} of {calls} calls failed in {s.window_s:g}s"
                self._transition(circuit, "open", now_ms, reason=reason)

    def _count(self, circuit: str, *, failures: int, successes: int, now_ms: int) -> Item:
        item = self.circuits.count(
            circuit, failures=failures, successes=successes, now_ms=now_ms, window_ms=int(self.settings.window_s * 1000)
        )
        with self._lock:
            self._items[circuit] = {**self._items.get(circuit, {}), **item}
        return item

    def _transition(self, circuit: str, to: str, now_ms: int, *, reason: str | None = None) -> None:
        """Records a state change this environment caused: local view, log line and metric."""
        self.refresh(force=True)
        logger().warning("circuit " + to, extra={"circuit": circuit, "reason": reason})
        count("CircuitOpened" if to == "open" else "CircuitClosed", circuit=circuit)
