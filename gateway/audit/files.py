"""A ``Timeline`` as files: a stereo WAV, a PNG a person reads at a glance, one HTML page.

Pure functions from the timeline to bytes or text; writing them is the command's job.
The PNG is drawn with Pillow: lanes for the caller (left channel) and the bot (right
channel) as envelopes, each bot clip as a band, lost audio hatched, marks, clears and
control frames as ticks with labels, and how the call ended at its end.
"""

from __future__ import annotations

import base64
import html
import io
import json
import wave
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from gateway.audit.timeline import Timeline

__all__ = ["html_page", "png", "wav"]

WIDTH = 1600
_MARGIN = 70
_LANE = 110
_TOP = 40
_EVENTS_H = 90
_HEIGHT = _TOP + 2 * _LANE + _EVENTS_H + 40
_BG, _INK, _GRID = (255, 255, 255), (40, 40, 40), (225, 225, 225)
_CALLER, _BOT, _CLIP = (31, 119, 180), (44, 160, 44), (214, 236, 214)
_CLIP_EDGE = (120, 180, 120)
_GAP, _CLEAR = (150, 150, 150), (214, 39, 40)
_MARK = {"mark_reached": (148, 103, 189), "mark_cleared": (255, 127, 14)}


def wav(t: Timeline) -> bytes:
    """Stereo 16-bit PCM at the call's rate: left the caller, right the bot."""
    frames = np.empty(2 * len(t.left), dtype="<i2")
    frames[0::2], frames[1::2] = t.left, t.right
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(t.rate)
        w.writeframes(frames.tobytes())
    return out.getvalue()


def png(t: Timeline) -> bytes:
    image = Image.new("RGB", (WIDTH, _HEIGHT), _BG)
    d = ImageDraw.Draw(image)
    span = max(len(t.left), 1)
    plot_w = WIDTH - 2 * _MARGIN

    def x(sample: float) -> int:
        return _MARGIN + round(sample / span * plot_w)

    seconds = span / t.rate
    d.text((_MARGIN, 10), f"call {t.call_id}   {seconds:.1f} s   "
           f"ended: {t.end['reason'] if t.end else 'not ended (still live?)'}", fill=_INK)
    _grid(d, seconds, x, t.rate)
    caller_top, bot_top = _TOP, _TOP + _LANE
    last_edge = -10
    for clip in t.clips:
        d.rectangle((x(clip.start), bot_top + 4, max(x(clip.end), x(clip.start) + 1),
                     bot_top + _LANE - 4), fill=_CLIP)
        if x(clip.start) - last_edge >= 3:  # each clip's start, where they stay apart
            last_edge = x(clip.start)
            d.line((last_edge, bot_top + 4, last_edge, bot_top + 12), fill=_CLIP_EDGE)
    for top, pcm, colour, name in ((caller_top, t.left, _CALLER, "caller"),
                                   (bot_top, t.right, _BOT, "bot")):
        _envelope(d, pcm, top, plot_w, colour)
        d.text((8, top + _LANE // 2 - 6), name, fill=colour)
    for g in t.gaps:
        top = caller_top if g.side == "caller" else bot_top
        for hx in range(x(g.start), max(x(g.end), x(g.start) + 2), 4):
            d.line((hx, top + 4, hx + 6, top + _LANE - 4), fill=_GAP)
        d.text((x(g.start) + 2, top + 4), g.why, fill=_GAP)
    _events(d, t, x)
    return _encode(image)


def _grid(d: ImageDraw.ImageDraw, seconds: float, x: Any, rate: int) -> None:
    step = next(s for s in (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 1e9)
                if seconds / s <= 16)
    bottom = _HEIGHT - 30
    tick = 0.0
    while tick <= seconds:
        px = x(tick * rate)
        d.line((px, _TOP, px, bottom), fill=_GRID)
        d.text((px - 8, bottom + 6), f"{tick:g}s", fill=_INK)
        tick += step


def _envelope(d: ImageDraw.ImageDraw, pcm: np.ndarray, top: int, plot_w: int,
              colour: tuple[int, int, int]) -> None:
    """The peak of each pixel column's samples, mirrored about the lane's middle."""
    mid, half = top + _LANE // 2, _LANE // 2 - 6
    d.line((_MARGIN, mid, _MARGIN + plot_w, mid), fill=_GRID)
    if len(pcm) == 0:
        return
    edges = np.linspace(0, len(pcm), plot_w + 1).astype(np.int64)
    magnitude = np.abs(pcm.astype(np.int32))
    for i in range(plot_w):
        lo, hi = edges[i], max(edges[i + 1], edges[i] + 1)
        peak = int(magnitude[lo:min(hi, len(pcm))].max(initial=0))
        h = round(peak / 32768 * half)
        if h:
            d.line((_MARGIN + i, mid - h, _MARGIN + i, mid + h), fill=colour)


def _events(d: ImageDraw.ImageDraw, t: Timeline, x: Any) -> None:
    top = _TOP + 2 * _LANE + 6
    row = 0
    for e in t.events:
        px = x(e.at_s * t.rate)
        colour = _MARK.get(e.kind, _CLEAR if e.kind in ("cleared", "ended") else _GAP)
        if e.kind in ("cleared", "ended"):  # across the lanes: what they cut short
            d.line((px, _TOP, px, _TOP + 2 * _LANE), fill=_CLEAR, width=2)
        d.line((px, top, px, top + 14), fill=colour, width=2)
        label = e.label if e.heard_ms is None else f"{e.label} ({e.heard_ms} ms heard)"
        prefix = {"cleared": "clear ", "ended": "end: "}.get(e.kind, "")
        text = prefix + label
        d.text((min(px + 3, WIDTH - 4 - d.textlength(text)), top + 16 + 14 * row), text,
               fill=colour)
        row = (row + 1) % 4  # stagger labels so neighbours do not overprint


def _encode(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def html_page(t: Timeline, png_bytes: bytes, wav_bytes: bytes, *, wav_name: str = "",
              embed_max_bytes: int | None = None) -> str:
    """One self-contained page: ``#timeline`` image, ``#player`` audio, ``#summary`` table.

    A WAV over ``embed_max_bytes`` is not embedded (base64 makes it a third larger again,
    and a browser holds it all): the player plays ``wav_name``, the file beside the page.
    """
    summary = t.summary()
    rows = "\n".join(
        f"<tr><th>{html.escape(key)}</th><td>{_cell(value)}</td></tr>"
        for key, value in summary.items())
    title = html.escape(f"Call {t.call_id}")
    image = base64.b64encode(png_bytes).decode()
    if embed_max_bytes is not None and len(wav_bytes) > embed_max_bytes and wav_name:
        source = html.escape(wav_name, quote=True)
        where = (f"<p>The audio is <a href=\"{source}\">{html.escape(wav_name)}</a> beside "
                 f"this page ({len(wav_bytes) / 1e6:.0f} MB, over the "
                 f"{embed_max_bytes / 1e6:.0f} MB embedded at most).</p>")
    else:
        source = "data:audio/wav;base64," + base64.b64encode(wav_bytes).decode()
        where = ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1em}} img{{max-width:100%}}
table{{border-collapse:collapse}} th,td{{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}} pre{{margin:0;white-space:pre-wrap}}</style></head>
<body><h1>{title}</h1>
<img id="timeline" alt="timeline of the call" src="data:image/png;base64,{image}">
<p>Left channel: the caller; right channel: the bot as the provider played it.</p>
<audio id="player" controls src="{source}"></audio>{where}
<table id="summary">
{rows}
</table></body></html>
"""


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        return f"<pre>{html.escape(json.dumps(value, indent=1, ensure_ascii=False))}</pre>"
    return html.escape("" if value is None else str(value))
