"""A lean Knowlarity load generator: many calls per process, cheap per frame.

The general simulator (``gateway.simulator``, Autobahn) costs several times
more CPU per frame, which on a small shared machine makes it the bottleneck of
a benchmark. This one is asyncio with a minimal RFC 6455 client written here
on plain non-blocking sockets (no Autobahn, no Twisted, no asyncio transports):

- every call connects, checks the ``101`` and ``Sec-WebSocket-Accept``, sends
  the documented start message (``encode_start``, a uuid4 call id), then
  streams 20 ms frames of 16 kHz PCM (640 bytes) for ``seconds``;
- a frame's PCM is a fixed noise template whose first 8 bytes are a stamp:
  the send time in µs since the epoch, int64 little-endian, read right before
  the write. Each call's masked frame (one random mask key per connection) is
  built once; per frame only the 8 stamp bytes are masked (one integer XOR)
  and joined to the prebuilt parts;
- ONE scheduler per process drives everything in ticks (``tick_ms``, 1 ms by
  default): each tick reads every socket that has data (one private epoll,
  polled without waiting) and sends every frame now due (a heap of due
  times). Call ``i``'s frame ``k`` is due at ``t0_i + k * 20 ms``, ``t0_i``
  uniformly random in the 20 ms after its handshake (random phases); call
  starts can be spread over ``ramp`` s. The event loop wakes about once per
  tick whatever the number of calls, instead of once per frame;
- receive times are the kernel's (``SO_TIMESTAMPNS``), so a read deferred to
  the next tick, or a generator process not scheduled at once, does not add
  to the measured latency (``read_delay_ms`` reports how late reads were);
- ``playAudio`` frames from the gateway are not JSON-parsed: the base64
  content is located by ``find`` and only the 16 characters around each
  stamp are decoded. A clip holding several 640-byte chunks (the gateway joins
  queued bot audio up to ``--playout-clip-ms``) yields one stamp per chunk.
  latency = receive time - stamp; the stamp bot writes its own send time
  there, so this is bot -> Kafka -> gateway -> caller;
- a hang-up or transfer frame makes the call close with 1000, as the provider
  does; after its last frame a call lingers until every chunk it sent has come
  back (or ``linger`` s), then hangs up with 1000.

With ``--workload realistic`` (``kgw_bench.realistic``) each call follows a
seeded script instead: speech (the template) in turns, quiet frames (zeros,
still stamped) between them; its start message names its script
(``campaign: bench-<index>``), and latency is read from the stamp at the head
of each answer clip (the bot's audio is resampled by the node, so the 8-byte
stamp could not survive). The echo workload (the default here) is unchanged.

``python -m kgw_bench.loadgen --url URL --calls N --seconds S --json``
prints one JSON object as its last line; ``--procs P`` runs P child processes
and aggregates them (latency percentiles over all their samples).
``run_load`` is the same, in-process, for one process. Linux only (epoll,
SO_TIMESTAMPNS); ws:// only.

The parts: ``frames`` (the frame codec and the stamped PCM), ``call`` (one
call's socket, handshake, parser and close), ``scheduler`` (the one
scheduler per process, and ``run_load``), ``stats`` (percentiles and the
result object) and ``cli`` (the command line, and ``--procs``).
"""

from kgw_bench.loadgen.cli import main
from kgw_bench.loadgen.frames import FRAME_BYTES, noise_template
from kgw_bench.loadgen.scheduler import run_load
from kgw_bench.loadgen.stats import summarize

__all__ = ["FRAME_BYTES", "main", "noise_template", "run_load", "summarize"]
