"""Node leases: every started call ends exactly once on the bus, whatever happens to its node.

Pure: values in, decisions out; ``gateway.lease.keeper`` does the Kafka I/O and
``gateway.records`` the protobuf. Times are seconds on the keeper's monotonic
clock unless named ``*_us`` (wall clock, microseconds, as on the wire).

The mechanism
=============

Each node keeps a **lease** on ``<prefix>.nodes`` (one partition, compacted),
key ``lease/<node id>``: a heartbeat every ``lease_s / 3`` carrying the node's
**epoch** (one more than any epoch of its id found in the topic when it
started), a heartbeat counter, its ``lease_s`` and the calls it holds. A call
enters the lease when it starts (a lease is written at once, not at the next
heartbeat) and leaves it only once the node's bus has delivered everything it
queued, or says its ``ended`` was acknowledged; until then it is listed
``ending``. A new call's records wait in the bus until a lease listing it is
on the broker.

Ending a lost epoch ``(node, epoch)`` is a two-step append to the one
partition, so every reader sees the same order:

1. **Claim**: append ``claim/<node>/<epoch>/<claimer>/<claimer epoch>`` with the
   calls of the lease as the claimer saw it, then read the partition up to the
   claim. **The first claim for ``(node, epoch)`` in log order wins**; every
   other claimer does nothing. Claims have keys of their own, so compaction
   never replaces the first one.
2. **Settle**: the winner writes a ``NODE_LOST`` ``ended`` for each claimed
   call to ``<prefix>.calls.inbound`` (keyed by call id, ``node_id`` of the
   lost node, the detail naming the winner), waits for the acks, then appends
   ``settled/<node>/<epoch>``.

Who claims:

- **A returning node** (same id, next epoch) claims its previous epoch before
  it listens, if that lease was not closed and lists calls. If a peer's claim
  came first it waits (up to ``2 * (lease + margin)``) for the peer's
  settlement, then takes calls either way.
- **A peer** claims a lease that has been silent for ``lease_s`` (the lost
  node's own) plus ``lease_margin_s`` (the peer's). Silence is measured on the
  peer's clock from when it read the lost node's last heartbeat, and only
  while the log demonstrably works for the peer: the peer's own heartbeats
  must come back from the partition within ``lease_s / 3`` of being sent
  (``probe``), and silence counts from the start of the current unbroken run
  of prompt probes at the earliest. A broker outage therefore expires nobody:
  after it, every node gets ``lease + margin`` to heartbeat again. The verdict
  is taken when a prompt probe is read back, and the peer sends an extra probe
  at each lease's deadline. Since the partition is totally ordered, reading
  one's own probe proves every heartbeat written before it was read too.
- **Fencing**: a claim against ``(node, epoch)`` ends that epoch for good. A
  node that reads a claim against its own current epoch (it was cut off from
  the broker for longer than lease + margin while its peers were not) must not
  write anything more: the keeper hard-exits the process. A returning node
  never shares an epoch with its predecessor, so predecessor and successor
  never both end a call; returning node and peer race only through claims, and
  exactly one claim wins.

Bounds
======

From a SIGKILL, with ``L = lease_s`` and ``M = lease_margin_s``:

- **Peer**: the lost node's last heartbeat was at most ``L/3`` before it died;
  the peer decides ``L + M`` after reading it (its extra probe is due then, a
  prompt one comes back in milliseconds), then needs one claim round trip and
  the ends' acks. So the ends are on the bus between ``2L/3 + M`` and
  ``L + M`` (+ a few round trips, well under a second on a healthy broker)
  after the death; with the defaults (10 s, 5 s), 11.7 to 15 s. A peer that
  started less than ``L + M`` ago, or whose probes were slow, waits longer:
  silence counts from its first prompt probe.
- **Restart with the same id**: the ends are written during the new node's
  start, before it listens: bounded by the restart time plus the same round
  trips (plus up to ``2 (L + M)`` if a peer's claim won and the peer died
  before settling).

Record sequence of a NODE_LOST end
==================================

A lost node cannot say how far it got, so a ``NODE_LOST`` ``ended`` carries
``record_seq = LOST_SEQ`` (2**63), larger than any sequence a node writes: it
sorts after every record of the call, and the records a bot never saw before
it died with the node (no ``RecordsDropped`` is written for them: nobody knows
how many there were). Bots that check ``record_seq`` for gaps treat a
``NODE_LOST`` end as final whatever its sequence; bots that deduplicate by
``(call_id, record_seq)`` also drop a repeated ``NODE_LOST`` end.

Windows that remain (honestly)
==============================

- **Start** (closed): the bus holds every record of a new call, its
  ``started`` first, until a lease listing the call is acknowledged
  (``Bus.hold`` / ``Bus.release``, a few milliseconds on a healthy broker), so
  no ``started`` reaches the broker before the lease that makes someone end it.
- **End** (narrowed): a call leaves the lease once the bus reports its own
  ``ended`` and its call-state tombstone acknowledged (``end_delivered``), or
  once the bus is idle. A crash
  between that ack and the next lease write (one keeper wake-up plus a round
  trip, milliseconds) gives the call a second end, ``NODE_LOST``, after the
  first; a bot that has seen an ``ended`` ignores later ones.
- **Zombie**: a node cut off from the broker for longer than lease + margin
  exits when it reads the claim against it; what its bus delivers between the
  broker coming back and that read (records of calls already ended
  ``NODE_LOST``, possibly an ``ended``) goes out after the ``NODE_LOST`` end.
- **Winner dies mid-settlement**: the calls it had not ended yet stay without
  an end (a retry could end some twice); nobody else claims a claimed epoch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from gateway.core import model as m

# record_seq of every NODE_LOST end: past anything a node writes (see above).
LOST_SEQ = 2**63
# Ended calls kept in a lease while the bus is busy (see "End" above).
MAX_ENDING = 1000


@dataclass(frozen=True)
class HeldCall:
    call_id: str
    started_unix_us: int = 0
    ending: bool = False


@dataclass(frozen=True)
class Lease:
    node_id: str
    epoch: int
    seq: int
    time_unix_us: int
    lease_ms: int
    calls: tuple[HeldCall, ...] = ()
    closed: bool = False


@dataclass(frozen=True)
class Claim:
    node_id: str
    epoch: int
    claimer_id: str
    claimer_epoch: int
    calls: tuple[HeldCall, ...]
    time_unix_us: int = 0


@dataclass(frozen=True)
class Settled:
    node_id: str
    epoch: int
    claimer_id: str
    claimer_epoch: int
    ended_call_ids: tuple[str, ...]
    time_unix_us: int = 0


NodeRecord = Lease | Claim | Settled


def key_of(rec: NodeRecord) -> str:
    """The compaction key: one lease per node, one key per claim and settlement."""
    if isinstance(rec, Lease):
        return f"lease/{rec.node_id}"
    if isinstance(rec, Claim):
        return f"claim/{rec.node_id}/{rec.epoch}/{rec.claimer_id}/{rec.claimer_epoch}"
    return f"settled/{rec.node_id}/{rec.epoch}"


@dataclass(frozen=True)
class Timing:
    lease_s: float
    margin_s: float

    @property
    def heartbeat_s(self) -> float:
        return self.lease_s / 3

    @property
    def prompt_s(self) -> float:
        """A probe read back later than this breaks the run of prompt probes."""
        return self.lease_s / 3


def lost_ends(claim: Claim, at_unix_s: float) -> list[m.Inbound]:
    """The NODE_LOST ``ended`` records the winner of ``claim`` writes, one per call."""
    detail = (f"node {claim.node_id} epoch {claim.epoch} lost; ended by node "
              f"{claim.claimer_id} epoch {claim.claimer_epoch}")
    seen: set[str] = set()
    out = []
    for c in claim.calls:
        if c.call_id in seen:
            continue
        seen.add(c.call_id)
        out.append(m.Inbound(call_id=c.call_id, record_seq=LOST_SEQ, at=at_unix_s,
                             body=m.CallEnded(reason=m.EndReason.NODE_LOST, detail=detail)))
    return out


def settlement(claim: Claim, time_unix_us: int) -> Settled:
    return Settled(claim.node_id, claim.epoch, claim.claimer_id, claim.claimer_epoch,
                   tuple(dict.fromkeys(c.call_id for c in claim.calls)), time_unix_us)


# --- what a node holds ----------------------------------------------------------------


@dataclass(frozen=True)
class Holdings:
    """The calls one node holds: live ones (counted per socket, since a second socket for
    the same id replaces the first only once the first has closed) and ended ones whose
    ``ended`` may not be on the broker yet."""

    live: tuple[tuple[str, int, int], ...] = ()  # (call id, sockets, started_unix_us)
    ending: tuple[HeldCall, ...] = ()

    def started(self, call_id: str, now_unix_us: int) -> Holdings:
        live = dict((c, (n, t)) for c, n, t in self.live)
        n, t = live.get(call_id, (0, now_unix_us))
        live[call_id] = (n + 1, t)
        ending = tuple(h for h in self.ending if h.call_id != call_id)
        return Holdings(tuple((c, n, t) for c, (n, t) in live.items()), ending)

    def ended(self, call_id: str) -> Holdings:
        live = dict((c, (n, t)) for c, n, t in self.live)
        if call_id not in live:
            return self
        n, t = live.pop(call_id)
        ending = self.ending
        if n > 1:
            live[call_id] = (n - 1, t)
        else:
            ending = (ending + (HeldCall(call_id, t, ending=True),))[-MAX_ENDING:]
        return Holdings(tuple((c, n, t) for c, (n, t) in live.items()), ending)

    def delivered(self) -> Holdings:
        """The bus has nothing queued or in flight: every published end is on the broker."""
        return replace(self, ending=())

    def end_delivered(self, call_id: str) -> Holdings:
        """This call's ended record is on the broker: it need not be listed any more."""
        if not any(h.call_id == call_id for h in self.ending):
            return self
        return replace(self, ending=tuple(h for h in self.ending if h.call_id != call_id))

    def calls(self) -> tuple[HeldCall, ...]:
        return tuple(HeldCall(c, t) for c, _, t in self.live) + self.ending


# --- the view of the nodes topic ---------------------------------------------------------


@dataclass
class _Seen:
    lease: Lease
    seen_at: float


@dataclass
class LeaseBook:
    """What this node has read from the nodes topic, and the decisions it implies.

    Feed it every record in log order (``apply``) and every probe sent
    (``probe_sent``); it never performs anything.
    """

    node_id: str
    timing: Timing
    epoch: int = 0  # this node's epoch, once chosen
    leases: dict[str, _Seen] = field(default_factory=dict)
    # The first claim in log order for each (node, epoch): the winner.
    winners: dict[tuple[str, int], Claim] = field(default_factory=dict)
    settled: dict[tuple[str, int], Settled] = field(default_factory=dict)
    max_epoch: dict[str, int] = field(default_factory=dict)
    # Probes: this node's own heartbeats, by seq, and when they were sent.
    _probes: dict[int, float] = field(default_factory=dict)
    ok_since: float | None = None
    # Send time of the latest prompt probe read back: the time verdicts are taken at.
    proven_at: float | None = None

    # --- input -------------------------------------------------------------------

    def apply(self, rec: NodeRecord, now: float) -> None:
        if isinstance(rec, Lease):
            self._epoch_seen(rec.node_id, rec.epoch)
            if rec.node_id == self.node_id and rec.epoch == self.epoch:
                self._probe_read(rec.seq, now)
            old = self.leases.get(rec.node_id)
            if old is None or (rec.epoch, rec.seq) > (old.lease.epoch, old.lease.seq):
                self.leases[rec.node_id] = _Seen(rec, now)
        elif isinstance(rec, Claim):
            self._epoch_seen(rec.node_id, rec.epoch)
            self._epoch_seen(rec.claimer_id, rec.claimer_epoch)
            self.winners.setdefault((rec.node_id, rec.epoch), rec)
        else:
            self._epoch_seen(rec.node_id, rec.epoch)
            self.settled.setdefault((rec.node_id, rec.epoch), rec)

    def probe_sent(self, seq: int, now: float) -> None:
        self._probes[seq] = now

    def probe_failed(self) -> None:
        self._break()

    def check_probes(self, now: float) -> None:
        """A probe not read back within the prompt limit breaks the run."""
        if any(now - sent > self.timing.prompt_s for sent in self._probes.values()):
            self._break()

    def _probe_read(self, seq: int, now: float) -> None:
        sent = self._probes.pop(seq, None)
        if sent is None:
            return
        # Older probes outstanding were lost or overtaken: no longer evidence.
        for s in [s for s in self._probes if s < seq]:
            del self._probes[s]
        if now - sent > self.timing.prompt_s:
            self._break()
            return
        if self.ok_since is None:
            self.ok_since = sent
        self.proven_at = sent

    def _break(self) -> None:
        self.ok_since = None
        self.proven_at = None
        self._probes.clear()

    def _epoch_seen(self, node_id: str, epoch: int) -> None:
        if epoch > self.max_epoch.get(node_id, 0):
            self.max_epoch[node_id] = epoch

    # --- decisions -----------------------------------------------------------------

    def next_epoch(self) -> int:
        return self.max_epoch.get(self.node_id, 0) + 1

    def is_open(self, lease: Lease) -> bool:
        """Calls listed, not closed, not claimed by anybody, not settled."""
        key = (lease.node_id, lease.epoch)
        return (bool(lease.calls) and not lease.closed and key not in self.winners
                and key not in self.settled)

    def predecessor(self) -> Lease | None:
        """This node id's own earlier epoch, if it left calls nobody has claimed."""
        seen = self.leases.get(self.node_id)
        if seen is None or seen.lease.epoch >= self.epoch or not self.is_open(seen.lease):
            return None
        return seen.lease

    def _deadline(self, seen: _Seen) -> float | None:
        if self.ok_since is None:
            return None
        since = max(seen.seen_at, self.ok_since)
        return since + seen.lease.lease_ms / 1000 + self.timing.margin_s

    def expired(self) -> list[Lease]:
        """Peers' open leases silent for their lease plus our margin, proven by a probe."""
        if self.proven_at is None:
            return []
        out = []
        for node_id, seen in sorted(self.leases.items()):
            if node_id == self.node_id or not self.is_open(seen.lease):
                continue
            deadline = self._deadline(seen)
            if deadline is not None and self.proven_at >= deadline:
                out.append(seen.lease)
        return out

    def next_deadline(self) -> float | None:
        """When an open peer lease would expire: the keeper sends a probe then."""
        deadlines = [d for node_id, seen in self.leases.items()
                     if node_id != self.node_id and self.is_open(seen.lease)
                     and (d := self._deadline(seen)) is not None]
        return min(deadlines, default=None)

    def claim(self, lease: Lease, time_unix_us: int) -> Claim:
        return Claim(lease.node_id, lease.epoch, self.node_id, self.epoch, lease.calls,
                     time_unix_us)

    def won(self, claim: Claim) -> bool | None:
        """True if ``claim`` is the first for its epoch, False if another is, None if no
        claim for it has been read yet."""
        first = self.winners.get((claim.node_id, claim.epoch))
        if first is None:
            return None
        return (first.claimer_id, first.claimer_epoch) == (claim.claimer_id, claim.claimer_epoch)

    def fenced(self) -> Claim | None:
        """A claim against this node's current epoch: it must write nothing more."""
        return self.winners.get((self.node_id, self.epoch)) if self.epoch else None

    def is_settled(self, node_id: str, epoch: int) -> bool:
        return (node_id, epoch) in self.settled


def lease(node_id: str, epoch: int, seq: int, time_unix_us: int, timing: Timing,
          calls: Iterable[HeldCall] = (), closed: bool = False) -> Lease:
    return Lease(node_id, epoch, seq, time_unix_us, round(timing.lease_s * 1000),
                 tuple(calls), closed)
