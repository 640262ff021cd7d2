"""The lease rules (gateway.lease.rules) on values alone: expiry, claims, fencing, what to write."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import records
from gateway.core import model as m
from gateway.lease import rules as ls

T = ls.Timing(lease_s=3.0, margin_s=2.0)  # deadline: 5 s of proven silence
ME = "me"
CALL = (ls.HeldCall("c1", 1),)


def peer_lease(node: str = "p", epoch: int = 1, seq: int = 1, calls: tuple[ls.HeldCall, ...]
               = CALL, closed: bool = False, lease_ms: int = 3000) -> ls.Lease:
    return ls.Lease(node, epoch, seq, 0, lease_ms, calls, closed)


def own(seq: int) -> ls.Lease:
    return ls.Lease(ME, 1, seq, 0, 3000)


def claim(node: str = "p", epoch: int = 1, by: str = ME, by_epoch: int = 1) -> ls.Claim:
    return ls.Claim(node, epoch, by, by_epoch, CALL)


# Events: ("read", record, t) a record read at t; ("probe", seq, sent, read_at) one of our
# heartbeats sent and read back (read_at None: never); ("fail",) a send that failed.
Event = tuple[object, ...]


def book_after(events: list[Event], epoch: int = 1) -> ls.LeaseBook:
    book = ls.LeaseBook(ME, T, epoch=epoch)
    for ev in events:
        if ev[0] == "read":
            book.apply(ev[1], ev[2])  # type: ignore[arg-type]
        elif ev[0] == "probe":
            _, seq, sent, read_at = ev
            book.probe_sent(seq, sent)  # type: ignore[arg-type]
            if read_at is not None:
                book.apply(own(seq), read_at)  # type: ignore[arg-type]
            else:
                book.check_probes(sent + T.prompt_s + 0.01)  # type: ignore[operator]
        elif ev[0] == "fail":
            book.probe_failed()
    return book


def probes(start: float, end: float, step: float = 1.0, first_seq: int = 1) -> list[Event]:
    """Prompt probes (read back 10 ms after sending) from start to end."""
    out: list[Event] = []
    t, seq = start, first_seq
    while t <= end + 1e-9:
        out.append(("probe", seq, t, t + 0.01))
        t, seq = t + step, seq + 1
    return out


@dataclass(frozen=True)
class ExpiryCase:
    name: str
    events: list[Event]
    expired: list[str]


EXPIRY = [
    ExpiryCase("silent 5 s with prompt probes all along",
               [("read", peer_lease(), 0.0)] + probes(0.0, 5.0), ["p"]),
    ExpiryCase("silent 4.9 s is not yet expired",
               [("read", peer_lease(), 0.0)] + probes(0.0, 4.9, 0.7), []),
    ExpiryCase("a newer heartbeat restarts the silence",
               [("read", peer_lease(), 0.0)] + probes(0.0, 3.0)
               + [("read", peer_lease(seq=2), 3.5)] + probes(4.0, 8.0, first_seq=10), []),
    ExpiryCase("slow probes prove nothing",
               [("read", peer_lease(), 0.0)]
               + [("probe", i, float(i), i + 1.5) for i in range(1, 9)], []),
    ExpiryCase("after a broker outage silence counts from the first prompt probe",
               [("read", peer_lease(), 0.0)] + probes(0.0, 1.0)
               + [("probe", 3, 2.0, None), ("fail",)] + probes(10.0, 14.0, first_seq=4), []),
    ExpiryCase("... and expires once the log has worked for lease plus margin",
               [("read", peer_lease(), 0.0)] + probes(0.0, 1.0)
               + [("probe", 3, 2.0, None)] + probes(10.0, 15.0, first_seq=4), ["p"]),
    ExpiryCase("a closed lease is never expired",
               [("read", peer_lease(closed=True, calls=()), 0.0)] + probes(0.0, 9.0), []),
    ExpiryCase("a lease with no calls has nothing to end",
               [("read", peer_lease(calls=()), 0.0)] + probes(0.0, 9.0), []),
    ExpiryCase("a claimed lease is not claimed again",
               [("read", peer_lease(), 0.0), ("read", claim(by="q"), 1.0)]
               + probes(0.0, 9.0), []),
    ExpiryCase("a settled lease is not claimed again",
               [("read", peer_lease(), 0.0),
                ("read", ls.settlement(claim(by="q"), 0), 1.0)] + probes(0.0, 9.0), []),
    ExpiryCase("the peer's own, longer lease counts",
               [("read", peer_lease(lease_ms=10_000), 0.0)] + probes(0.0, 11.0), []),
    ExpiryCase("our own lease is never expired by us",
               [("read", ls.Lease(ME, 1, 99, 0, 3000, CALL), 0.0)] + probes(0.0, 9.0), []),
    ExpiryCase("an older epoch's heartbeat does not hide a newer lease",
               [("read", peer_lease(epoch=2, seq=1, calls=()), 0.0),
                ("read", peer_lease(epoch=1, seq=7), 0.5)] + probes(0.0, 9.0), []),
]


@pytest.mark.parametrize("case", EXPIRY, ids=[c.name for c in EXPIRY])
def test_expiry(case: ExpiryCase) -> None:
    """A peer's lease is expired exactly when probes prove it silent for lease plus margin."""
    book = book_after(case.events)
    assert [x.node_id for x in book.expired()] == case.expired


def test_next_deadline_is_when_the_silence_would_be_proven() -> None:
    """The keeper's extra probe is due lease plus margin after the later of the peer's last
    heartbeat and the start of the run of prompt probes."""
    book = book_after(probes(0.0, 2.0) + [("read", peer_lease(), 1.5)])
    assert book.next_deadline() == pytest.approx(1.5 + 5.0)
    assert book_after([("read", peer_lease(), 1.5)]).next_deadline() is None


@dataclass(frozen=True)
class ClaimCase:
    name: str
    log: list[ls.NodeRecord]
    mine: ls.Claim
    won: bool | None


CLAIMS = [
    ClaimCase("alone", [claim()], claim(), True),
    ClaimCase("first of two", [claim(), claim(by="q")], claim(), True),
    ClaimCase("second of two", [claim(by="q"), claim()], claim(), False),
    ClaimCase("the returning node against a peer", [claim(by="p", by_epoch=2), claim()],
              claim(), False),
    ClaimCase("an earlier epoch of ours does not count", [claim(by_epoch=0), claim()],
              claim(), False),
    ClaimCase("a claim on another epoch is no rival", [claim(epoch=2, by="q"), claim()],
              claim(), True),
    ClaimCase("not read back yet", [], claim(), None),
]


@pytest.mark.parametrize("case", CLAIMS, ids=[c.name for c in CLAIMS])
def test_first_claim_in_log_order_wins(case: ClaimCase) -> None:
    """Of the claims on one (node, epoch), the first in log order wins; the rest lose."""
    book = ls.LeaseBook(ME, T, epoch=1)
    for i, rec in enumerate(case.log):
        book.apply(rec, float(i))
    assert book.won(case.mine) is case.won


FENCE = [
    ("a claim on our epoch fences us", [claim(node=ME, epoch=3, by="p")], 3, True),
    ("a claim on our previous epoch does not", [claim(node=ME, epoch=2, by="p")], 3, False),
    ("a claim on a peer does not", [claim()], 3, False),
    ("before an epoch is chosen nothing fences", [claim(node=ME, epoch=0, by="p")], 0, False),
]


@pytest.mark.parametrize("log,epoch,fenced", [f[1:] for f in FENCE], ids=[f[0] for f in FENCE])
def test_fencing(log: list[ls.NodeRecord], epoch: int, fenced: bool) -> None:
    """A node is fenced by a claim on its own current epoch, and by nothing else."""
    book = ls.LeaseBook(ME, T, epoch=epoch)
    for rec in log:
        book.apply(rec, 0.0)
    assert (book.fenced() is not None) is fenced


EPOCHS = [
    ("nothing seen", [], 1),
    ("our lease", [ls.Lease(ME, 4, 9, 0, 3000)], 5),
    ("a claim our epoch made", [claim(by=ME, by_epoch=6)], 7),
    ("a claim on our epoch", [claim(node=ME, epoch=8, by="p")], 9),
    ("a settlement of our epoch", [ls.settlement(claim(node=ME, epoch=3, by="p"), 0)], 4),
    ("a peer's epochs do not count", [peer_lease(epoch=12)], 1),
]


@pytest.mark.parametrize("log,expected", [e[1:] for e in EPOCHS], ids=[e[0] for e in EPOCHS])
def test_next_epoch(log: list[ls.NodeRecord], expected: int) -> None:
    """A starting node takes one more than any epoch of its id anywhere in the topic."""
    book = ls.LeaseBook(ME, T)
    for rec in log:
        book.apply(rec, 0.0)
    assert book.next_epoch() == expected


PREDECESSOR = [
    ("left calls", [ls.Lease(ME, 1, 5, 0, 3000, CALL)], True),
    ("shut down cleanly", [ls.Lease(ME, 1, 5, 0, 3000, (), closed=True)], False),
    ("held no calls", [ls.Lease(ME, 1, 5, 0, 3000)], False),
    ("already claimed by a peer", [ls.Lease(ME, 1, 5, 0, 3000, CALL), claim(ME, 1, "p")], False),
    ("nothing", [], False),
]


@pytest.mark.parametrize("log,found", [p[1:] for p in PREDECESSOR],
                         ids=[p[0] for p in PREDECESSOR])
def test_predecessor(log: list[ls.NodeRecord], found: bool) -> None:
    """A returning node ends its previous epoch's calls only if that lease is open."""
    book = ls.LeaseBook(ME, T)
    for rec in log:
        book.apply(rec, 0.0)
    book.epoch = book.next_epoch()
    assert (book.predecessor() is not None) is found


def test_lost_ends_one_per_call_naming_the_winner() -> None:
    """The winner writes one NODE_LOST end per claimed call, sequence LOST_SEQ, naming
    the lost epoch and itself."""
    c = ls.Claim("n1", 4, "n2", 7, (ls.HeldCall("a"), ls.HeldCall("b", ending=True),
                                    ls.HeldCall("a")))
    out = ls.lost_ends(c, 1000.0)
    assert [r.call_id for r in out] == ["a", "b"]
    assert all(r.record_seq == ls.LOST_SEQ and r.at == 1000.0 for r in out)
    assert {r.body for r in out} == {m.CallEnded(
        m.EndReason.NODE_LOST, "node n1 epoch 4 lost; ended by node n2 epoch 7")}
    assert ls.settlement(c, 5).ended_call_ids == ("a", "b")


HOLDINGS = [
    ("a started call is held", [("start", "a")], [("a", False)]),
    ("an ended call is held as ending", [("start", "a"), ("end", "a")], [("a", True)]),
    ("delivery forgets ended calls", [("start", "a"), ("end", "a"), ("delivered",)], []),
    ("a replaced socket leaves the call live",
     [("start", "a"), ("start", "a"), ("end", "a")], [("a", False)]),
    ("a restarted call id is live again", [("start", "a"), ("end", "a"), ("start", "a")],
     [("a", False)]),
    ("an end for a call never started is ignored", [("end", "x")], []),
    ("delivery keeps live calls", [("start", "a"), ("start", "b"), ("end", "b"),
                                   ("delivered",)], [("a", False)]),
]


@pytest.mark.parametrize("ops,expected", [h[1:] for h in HOLDINGS], ids=[h[0] for h in HOLDINGS])
def test_holdings(ops: list[tuple[str, ...]], expected: list[tuple[str, bool]]) -> None:
    """A call is in the lease from its start until the bus has delivered its end."""
    h = ls.Holdings()
    for op in ops:
        if op[0] == "start":
            h = h.started(op[1], 10)
        elif op[0] == "end":
            h = h.ended(op[1])
        else:
            h = h.delivered()
    assert [(c.call_id, c.ending) for c in h.calls()] == expected


def test_ending_calls_are_bounded() -> None:
    """Under a bus that never idles, at most MAX_ENDING ended calls stay listed, newest kept."""
    h = ls.Holdings()
    for i in range(ls.MAX_ENDING + 5):
        h = h.started(f"c{i}", 0).ended(f"c{i}")
    assert len(h.ending) == ls.MAX_ENDING
    assert h.ending[-1].call_id == f"c{ls.MAX_ENDING + 4}"


ROUND_TRIP = [
    ls.Lease("n1", 3, 17, 123, 10_000, (ls.HeldCall("a", 5), ls.HeldCall("b", 6, True))),
    ls.Lease("n1", 3, 18, 124, 10_000, (), closed=True),
    ls.Claim("n1", 3, "n2", 1, (ls.HeldCall("a", 5),), 99),
    ls.Settled("n1", 3, "n2", 1, ("a", "b"), 100),
]


@pytest.mark.parametrize("rec", ROUND_TRIP, ids=lambda r: type(r).__name__)
def test_node_records_round_trip(rec: ls.NodeRecord) -> None:
    """Every node record decodes to the value it was encoded from."""
    assert records.decode_node_record(records.encode_node_record(rec)) == rec


@pytest.mark.parametrize("data", [b"\xff\xff", b""], ids=["garbage", "no body"])
def test_bad_node_records_are_refused(data: bytes) -> None:
    """An undecodable node record, or one with no body, raises BadRecord."""
    with pytest.raises(records.BadRecord):
        records.decode_node_record(data)


def test_keys_keep_every_claim_through_compaction() -> None:
    """Leases share one key per node; claims and settlements get keys of their own."""
    keys = [ls.key_of(r) for r in (peer_lease(seq=1), peer_lease(seq=2), claim(), claim(by="q"),
                                   claim(by_epoch=2), ls.settlement(claim(), 0))]
    assert keys[0] == keys[1] == "lease/p"
    assert len(set(keys[2:])) == 4


def test_node_lost_end_reaches_the_wire() -> None:
    """A NODE_LOST end encodes as END_REASON_NODE_LOST (11) and decodes back."""
    (rec,) = ls.lost_ends(claim(), 1.0)
    pb = records.decode_inbound(records.encode_inbound(rec, "p"))
    assert pb.ended.reason == 11 and pb.record_seq == ls.LOST_SEQ and pb.node_id == "p"
    assert records.end_reason(pb) is m.EndReason.NODE_LOST


def test_lease_module_is_pure() -> None:
    """gateway.lease.rules imports no I/O: no asyncio, Twisted, aiokafka, sockets or protobuf."""
    tree = ast.parse(Path(ls.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    banned = ("asyncio", "twisted", "aiokafka", "socket", "google", "gateway.proto",
              "gateway.records", "time")
    assert not [i for i in imported if i.split(".")[0] in banned or i.startswith(banned)]
