"""The node's bounded record buffer: oldest dropped first, every loss accounted per call."""

from __future__ import annotations

import time

import pytest

from gateway.kafka.outbox import Entry, Headers, Loss, Outbox

IN = "knowlarity.calls.inbound"
OUT = "knowlarity.calls.outbound"


def _e(size: int, call_id: str = "", seq: int = -1, audio: bool = False,
       topic: str = IN, tag: str = "") -> Entry:
    # The tag goes in the key so that entries of equal size stay distinguishable.
    return Entry(topic, (tag or call_id).encode(), b"." * size, call_id, seq, audio)


def test_put_under_the_limit_keeps_everything():
    """Records that fit are all kept, counted by number and bytes, and nothing is dropped."""
    box = Outbox(max_bytes=100)
    assert [box.put(_e(n)) for n in (10, 20, 30)] == [0, 0, 0]
    assert (len(box), box.bytes, box.dropped_total, box.has_losses) == (3, 60, 0, False)


@pytest.mark.parametrize(
    ("max_bytes", "sizes", "drops", "kept", "kept_bytes"),
    [
        (10, [4, 4, 4], [0, 0, 1], [1, 2], 8),
        (10, [3, 3, 3, 9], [0, 0, 0, 3], [3], 9),
        (10, [5, 5], [0, 0], [0, 1], 10),
        (10, [20], [0], [0], 20),
        (10, [20, 1], [0, 1], [1], 1),
        (10, [2, 2, 20], [0, 0, 2], [2], 20),
    ],
)
def test_put_drops_oldest_records_until_the_bytes_fit(max_bytes, sizes, drops, kept, kept_bytes):
    """Over the byte limit, the oldest records go first; the newest is always kept."""
    box = Outbox(max_bytes)
    entries = [_e(n, tag=f"r{i}") for i, n in enumerate(sizes)]
    assert [box.put(e) for e in entries] == drops
    assert box.bytes == kept_bytes
    assert box.dropped_total == sum(drops)
    assert box.take(100) == [entries[i] for i in kept]


def test_take_returns_oldest_first_up_to_the_limit():
    """take(n) removes and returns at most n records, oldest first, and frees their bytes."""
    box = Outbox(1000)
    entries = [_e(10, "c", i, tag=f"r{i}") for i in range(5)]
    for e in entries:
        box.put(e)
    assert box.take(2) == entries[:2]
    assert (len(box), box.bytes) == (3, 30)
    assert box.take(10) == entries[2:]
    assert (len(box), box.bytes) == (0, 0)
    assert box.take(10) == []


def test_losses_are_accounted_per_call_in_the_order_they_happened():
    """Each call's dropped records are summed per topic: count, first/last record_seq, audio."""
    box = Outbox(max_bytes=30)
    box.put(_e(10, "b", 0))
    box.put(_e(10, "a", 0))
    box.put(_e(10, "a", 1, audio=True))
    box.put(_e(10, "b", 1, audio=True))  # drops b/0
    box.put(_e(10, "a", 2, audio=True))  # drops a/0
    box.put(_e(10))  # drops a/1
    box.put(_e(10, "b", 2))  # drops b/1
    losses = box.take_losses()
    assert list(losses) == [("b", IN), ("a", IN)]
    assert losses[("b", IN)] == Loss(records=2, first_record_seq=0, last_record_seq=1,
                                     audio_chunks=1)
    assert losses[("a", IN)] == Loss(records=2, first_record_seq=0, last_record_seq=1,
                                     audio_chunks=1)
    assert box.dropped_total == 4


def test_records_outside_any_call_are_counted_but_not_reported_per_call():
    """A dropped record with no call id raises the total but creates no per-call loss."""
    box = Outbox(max_bytes=10)
    box.put(_e(10))
    box.put(_e(10))
    assert box.dropped_total == 1
    assert not box.has_losses
    assert box.take_losses() == {}


def test_take_losses_hands_them_over_once():
    """take_losses returns the losses noted so far and starts afresh."""
    box = Outbox(max_bytes=10)
    box.put(_e(10, "a", 0))
    box.put(_e(10, "a", 1))
    assert box.has_losses
    assert list(box.take_losses()) == [("a", IN)]
    assert not box.has_losses
    assert box.take_losses() == {}
    box.put(_e(10, "a", 2))  # drops a/1 again: a new loss, counted from scratch
    assert box.take_losses() == {("a", IN): Loss(1, 1, 1, 0)}


def test_record_loss_of_a_delivery_failure_leaves_the_buffer_bytes_alone():
    """A record lost after leaving the buffer is accounted without changing the buffer's bytes."""
    box = Outbox(max_bytes=100)
    box.put(_e(10, "a", 0))
    (taken,) = box.take(1)
    box.put(_e(10, "a", 1))
    box.record_loss(taken)
    assert (len(box), box.bytes, box.dropped_total) == (1, 10, 1)
    assert box.take_losses() == {("a", IN): Loss(1, 0, 0, 0)}


def test_first_record_seq_is_the_lowest_even_when_losses_arrive_out_of_order():
    """An older record whose delivery fails after newer ones were dropped still sets first_seq."""
    box = Outbox(max_bytes=30)
    box.put(_e(10, "a", 3))
    (in_flight,) = box.take(1)  # a/3 handed to the producer: its 10 bytes still count
    for seq in (4, 5, 6):
        box.put(_e(10, "a", seq))  # a/4 dropped to make room for a/6
    box.record_loss(in_flight)  # then a/3 fails delivery
    box.settle([in_flight])
    assert box.take_losses() == {("a", IN): Loss(2, 3, 4, 0)}


def test_losses_of_records_without_a_sequence_count_but_leave_the_range_alone():
    """Records with record_seq -1 (outbound audit) add to the count, not to first/last seq."""
    box = Outbox(max_bytes=10)
    box.put(_e(10, "a", -1, topic=OUT))
    box.put(_e(10, "a", -1, topic=OUT))
    box.put(_e(10))
    assert box.take_losses() == {("a", OUT): Loss(2, -1, -1, 0)}


def test_losses_of_one_call_on_two_topics_are_kept_apart():
    """Inbound and outbound losses of the same call are reported separately, each on its topic."""
    box = Outbox(max_bytes=10)
    box.put(_e(10, "a", 0))
    box.put(_e(10, "a", -1, topic=OUT))  # drops a/0 (inbound)
    box.put(_e(10))  # drops the outbound one
    assert box.take_losses() == {("a", IN): Loss(1, 0, 0, 0), ("a", OUT): Loss(1, -1, -1, 0)}


def test_records_in_flight_count_until_settled():
    """Taken records stay in the byte accounting until the producer settles them."""
    box = Outbox(max_bytes=30)
    for seq in range(3):
        box.put(_e(10, "a", seq, tag=f"r{seq}"))
    taken = box.take(3)
    assert (len(box), box.bytes, box.in_flight_bytes) == (0, 0, 30)
    assert box.put(_e(10, "a", 3, tag="r3")) == 0  # the newest is always kept
    assert box.put(_e(10, "a", 4, tag="r4")) == 1  # ... but it displaces a queued one
    box.settle(taken)
    assert box.in_flight_bytes == 0
    assert box.put(_e(10, "a", 5, tag="r5")) == 0


# (share, records put as (call, size), records kept in order, losses by call)
SHARES = [
    ("flooder loses its own oldest", 25, [("f", 10), ("q", 10), ("f", 10), ("f", 10)],
     ["q", "f", "f"], {"f": 1}),
    ("all within share", 20, [("a", 10), ("b", 10), ("a", 10)], ["a", "b", "a"], {}),
    ("a record over the share alone is kept", 5, [("a", 10)], ["a"], {}),
    ("two flooders, one quiet call", 20,
     [("q", 5), ("f", 10), ("g", 10), ("f", 10), ("g", 10), ("f", 10), ("g", 10)],
     ["q", "f", "g", "f", "g"], {"f": 1, "g": 1}),
]


@pytest.mark.parametrize(("share", "puts", "kept", "lost"), [s[1:] for s in SHARES],
                         ids=[s[0] for s in SHARES])
def test_a_call_over_its_share_loses_its_own_records_not_others(share, puts, kept, lost):
    """Past its share a call's own oldest records go first; other calls keep theirs."""
    box = Outbox(max_bytes=1000, call_share=share)
    for i, (call, size) in enumerate(puts):
        box.put(_e(size, call, i))
    assert [e.call_id for e in box.take(100)] == kept
    assert {c: loss.records for (c, _t), loss in box.take_losses().items()} == lost


def test_a_flood_cannot_evict_a_quiet_call_from_a_full_buffer():
    """10 000 records of one call into a buffer with a quiet call's: the quiet call keeps all."""
    box = Outbox(max_bytes=10_000, call_share=2_000)
    for seq in range(5):
        box.put(_e(100, "quiet", seq))
    for seq in range(10_000):
        box.put(_e(100, "flood", seq))
    kept = box.take(100_000)
    assert [e.record_seq for e in kept if e.call_id == "quiet"] == [0, 1, 2, 3, 4]
    assert sum(1 for e in kept if e.call_id == "flood") == 20
    assert box.bytes == 0
    losses = box.take_losses()
    assert losses == {("flood", IN): Loss(9980, 0, 9979, 0)}


def test_each_record_is_charged_its_overhead_so_tiny_records_cannot_hide():
    """With a per-record overhead, a flood of 2-byte records fills the bound by count too."""
    box = Outbox(max_bytes=10_000, record_overhead=320)
    for seq in range(1000):
        box.put(_e(2, "a", seq))
    assert len(box) == 10_000 // 322
    assert box.bytes <= 10_000


def _p(size: int, call_id: str, seq: int, partition: int = 0, precious: bool = False,
       topic: str = IN) -> Entry:
    return Entry(topic, call_id.encode(), b"." * size, call_id, seq, not precious, partition,
                 precious=precious)


def test_started_and_ended_are_never_dropped_for_audio():
    """A full buffer drops audio, never a call's started or ended record."""
    box = Outbox(max_bytes=100)
    box.put(_p(10, "a", 0, precious=True))
    for seq in range(1, 30):
        box.put(_p(10, "a", seq))
    box.put(_p(10, "a", 30, precious=True))
    kept = box.take(100)
    assert [e.record_seq for e in kept if e.precious] == [0, 30]
    assert box.take_losses()[("a", IN)].records == 21


def test_records_older_than_max_age_are_dropped_and_reported():
    """With max_age_s, a record queued longer ago than that goes when the next one comes."""
    box = Outbox(max_bytes=10_000, max_age_s=60)
    box.put(_p(10, "a", 0), now=0.0)
    box.put(_p(10, "a", 1), now=30.0)
    box.put(_p(10, "a", 2), now=61.0)
    assert [e.record_seq for e in box.take(10)] == [1, 2]
    assert box.take_losses() == {("a", IN): Loss(1, 0, 0, 1)}


def test_partitions_are_taken_apart_and_unsent_records_go_back_in_order():
    """Each partition is drained on its own; records put back come first again, in order."""
    box = Outbox(max_bytes=10_000)
    for seq in range(4):
        box.put(_p(10, "a", seq, partition=0))
        box.put(_p(10, "b", seq, partition=1))
    assert sorted(box.partitions()) == [(IN, 0), (IN, 1)]
    first = box.take_partition((IN, 0), 3)
    assert [e.record_seq for e in first] == [0, 1, 2]
    assert box.in_flight_bytes == 30
    box.put_back(first[1:])  # 0 was delivered, 1 and 2 never sent
    box.settle(first[:1])
    assert box.in_flight_bytes == 0
    assert [e.record_seq for e in box.take_partition((IN, 0), 10)] == [1, 2, 3]
    assert [e.record_seq for e in box.take_partition((IN, 1), 10)] == [0, 1, 2, 3]


def test_a_failed_loss_note_owes_its_loss_again():
    """A loss note that is not delivered puts its loss back, merged with newer losses."""
    box = Outbox(max_bytes=10)
    box.put(_p(10, "a", 0))
    box.put(_p(10, "a", 1))  # drops seq 0
    (loss,) = box.take_losses().values()
    note = Entry(IN, b"a", b"note", "a", loss=loss)
    box.put(_p(10, "a", 2))  # drops seq 1
    box.restore_loss(note)
    assert box.take_losses() == {("a", IN): Loss(2, 0, 1, 2)}


def test_repartition_moves_queued_records_of_vanished_partitions():
    """After a topic shrinks, queued records of partitions that no longer exist move, in order."""
    box = Outbox(max_bytes=10_000)
    for seq in range(3):
        box.put(_p(10, "a", seq, partition=5))
    assert box.repartition(IN, 2, lambda key: 1) == 3
    assert box.partitions() == [(IN, 1)]
    assert [e.record_seq for e in box.take_partition((IN, 1), 10)] == [0, 1, 2]


def test_header_bytes_are_charged_and_a_tombstone_costs_its_overhead_only():
    """A record is charged its value, its headers' names and values and the overhead; a
    tombstone (no value) the overhead alone, and both free it all when taken and settled."""
    headers = Headers([("kgw-node-id", b"n1"), ("kgw-sample-rate", b"16000")])
    assert headers.nbytes == len("kgw-node-id") + 2 + len("kgw-sample-rate") + 5
    box = Outbox(max_bytes=10_000, record_overhead=100)
    box.put(Entry(IN, b"a", b"." * 10, "a", 0, headers=headers))
    assert box.bytes == 10 + headers.nbytes + 100
    box.put(Entry(IN, b"a", None, "a"))
    assert box.bytes == 10 + headers.nbytes + 200
    taken = box.take(10)
    assert box.in_flight_bytes == 10 + headers.nbytes + 200
    box.settle(taken)
    assert (box.bytes, box.in_flight_bytes) == (0, 0)


def test_headers_count_against_the_bound():
    """Records whose headers outweigh their value fill the buffer sooner."""
    headers = Headers([("h", b"." * 99)])
    box = Outbox(max_bytes=1_000)
    drops = sum(box.put(Entry(IN, b"a", b"." * 100, "a", seq, headers=headers))
                for seq in range(10))
    assert (len(box), drops) == (5, 5)


def test_a_loss_keeps_the_headers_of_what_it_lost():
    """The note for dropped records can carry their headers, even once the call is gone."""
    headers = Headers([("kgw-node-id", b"n1")])
    box = Outbox(max_bytes=30)
    for seq in range(4):
        box.put(Entry(IN, b"a", b"." * 10, "a", seq, headers=headers))
    (loss,) = box.take_losses().values()
    assert loss.headers is headers
    other = Loss()
    other.merge(loss)
    assert other.headers is headers


def test_a_partition_of_precious_records_only_is_not_scanned_for_victims():
    """A long call-state partition (started records and tombstones only) is skipped when
    the buffer looks for a victim: 5000 drops behind 20 000 of them take milliseconds, not
    the seconds a scan of every one would, and the victims are the audio."""
    state = ("t.calls.state", 7)
    box = Outbox(max_bytes=20_000 * 10 + 100)
    for i in range(20_000):
        box.put(_p(10, f"c{i}", 0, partition=state[1], precious=True, topic=state[0]))
    started = time.perf_counter()
    for seq in range(5_010):
        box.put(_p(10, "a", seq))
    assert time.perf_counter() - started < 2.0
    assert box.take_losses()[("a", IN)].records == 5_000
    assert len(box.take_partition(state, 100_000)) == 20_000
    assert box._precious[state] == 0
