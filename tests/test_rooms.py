"""The rooms of the README's layout table keep to their side: the edges never reach the
node or each other, the contract on the bus and the operator's room never reach an edge,
and the examples build on the contract alone."""

from __future__ import annotations

import pytest
from test_import_cycles import graph

EDGES = ("gateway.adapter", "gateway.kafka", "gateway.lease")
WIRING = ("gateway.node", "gateway.cli", "gateway.dev")

# room -> module prefixes its modules may never import
NEVER: dict[str, tuple[str, ...]] = {
    "gateway.adapter": (*WIRING, "gateway.kafka", "gateway.lease"),
    "gateway.kafka": (*WIRING, "gateway.adapter", "gateway.lease"),
    "gateway.lease": (*WIRING, "gateway.adapter"),
    # limits states every bound, the outbox's record charge (pure) among them.
    "gateway.ops": (*WIRING, "gateway.adapter", "gateway.kafka.bus", "gateway.kafka.clients",
                    "gateway.lease"),
    "gateway.records": (*WIRING, "gateway.adapter", "gateway.kafka", "gateway.lease.keeper",
                        "gateway.ops"),
    "gateway.topics": ("gateway.",),
    "gateway.config": (*WIRING, *EDGES, "gateway.ops"),
    "gateway.settings": (*WIRING, *EDGES, "gateway.ops", "gateway.config"),
    "gateway.sdk": (*WIRING, *EDGES, "gateway.bot", "gateway.testing"),
    "gateway.bot": (*WIRING, *EDGES),
    "gateway.audit": (*WIRING, *EDGES, "gateway.ops", "gateway.bot", "gateway.simulator",
                      "gateway.testing", "gateway.replay"),
    "gateway.replay": (*WIRING, *EDGES, "gateway.bot", "gateway.sdk"),
    "gateway.simulator": (*WIRING, *EDGES, "gateway.bot"),
}


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix.rstrip(".") + ".")


def breaches(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(edges.items()):
        for room, never in NEVER.items():
            if _in(module, room):
                out += [f"{module} imports {t}" for t in sorted(targets)
                        if any(_in(t, n) for n in never)]
    return out


def test_a_breach_is_reported() -> None:
    """The check would prove nothing if it could not see a breach."""
    assert breaches({"gateway.adapter.server": {"gateway.node", "gateway.core.call"}}) == [
        "gateway.adapter.server imports gateway.node"]


@pytest.mark.parametrize("room", sorted(NEVER))
def test_room_exists(room: str) -> None:
    assert any(_in(m, room) for m in graph()), room


def test_no_room_imports_what_it_may_not() -> None:
    assert breaches(graph()) == []
