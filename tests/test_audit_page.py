"""The audit's HTML page in a real browser: headless Chromium (Debian's ``chromium``,
which .ci/run installs) loads it, the timeline image decodes, the audio player reads the
embedded stereo WAV, the summary lists the call's gap; a screenshot is saved beside it."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image
from test_audit import Call, T, ms, silence, tone

from gateway.audit import files
from gateway.audit.command import write_call
from gateway.audit.timeline import build
from gateway.proto.knowlarity.gateway.v1 import inbound_pb2

R = 8000
# Appended to a copy of the page: once the player has read the WAV's header, what
# rendered is written into the DOM that --dump-dom prints.
PROBE = """<script>
const report = () => {
  const img = document.getElementById("timeline"), player = document.getElementById("player");
  document.body.dataset.probe = JSON.stringify({
    timeline: [img.naturalWidth, img.naturalHeight, img.complete],
    player: [player.readyState, player.duration, player.error && player.error.code],
    summary: document.getElementById("summary").innerText});
};
const p = document.getElementById("player");
p.addEventListener("loadedmetadata", report);
p.addEventListener("error", report);
p.load();
setTimeout(report, 4000);
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    raise AssertionError("headless Chromium is not installed (.ci/run installs Debian's)")


def a_call_with_a_gap() -> Call:
    c = Call()
    caller = tone(R * 4 // 10) + silence(R)
    for k in range(0, len(caller) // 2, 160):
        if 1600 <= k < 2400:
            continue  # lost on the way: a RecordsDropped says so
        c.audio(k, caller[2 * k:2 * k + 320], T + k * 1_000_000 // R)
    c.add(T + ms(0.5), dropped=inbound_pb2.RecordsDropped(
        records=5, first_record_seq=11, last_record_seq=15, audio_chunks=5))
    c.clip(0, tone(R // 5, seed=2), T + ms(0.7))
    c.end(T + ms(1.4))
    return c


def test_the_page_renders_in_chromium(tmp_path: Path) -> None:
    c = a_call_with_a_gap()
    timeline = build(c.inbound, c.outbound)
    page = next(p for p in write_call(timeline, tmp_path) if p.suffix == ".html")
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    browser = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
               "--autoplay-policy=no-user-gesture-required", "--virtual-time-budget=5000"]
    dom = subprocess.run([*browser, "--dump-dom", probed.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    m = re.search(r'data-probe="([^"]*)"', dom)
    assert m, "the page's script did not run:\n" + dom[:2000]
    probe = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    width, height, complete = probe["timeline"]
    assert complete and width > 0 and height > 0, "the timeline image did not decode"
    ready, duration, error = probe["player"]
    assert error is None and ready >= 1, f"the player did not read the WAV: {probe['player']}"
    assert abs(duration - len(timeline.left) / R) < 0.05
    assert '"why": "lost"' in probe["summary"], "the summary does not show the gap"

    shot = tmp_path / "audit-page.png"
    subprocess.run([*browser, "--window-size=1280,1400", f"--screenshot={shot}",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000, "the screenshot is empty"
    assert not np.asarray(timeline.left[1600:2400]).any(), "the gap is silent in the WAV"


def test_the_gap_is_drawn_on_the_timeline(tmp_path: Path) -> None:
    """The lost range is hatched in the caller's lane of the PNG, and only there."""
    timeline = build(a_call_with_a_gap().inbound, [])
    image = np.asarray(Image.open(io.BytesIO(files.png(timeline))).convert("RGB"))
    span, plot_w = len(timeline.left), files.WIDTH - 2 * files._MARGIN

    def x(sample: int) -> int:
        return files._MARGIN + round(sample / span * plot_w)

    lane = image[files._TOP:files._TOP + files._LANE]
    hatched = np.all(lane == files._GAP, axis=2)
    columns = np.flatnonzero(hatched.any(axis=0))
    assert columns.size, "no gap drawn"
    assert x(1600) <= columns.min() and columns.max() <= x(2400) + 40  # + its label
