"""The caller's side of the audio: a generated speech-like signal, WAV input, framing.

Frames are built once, before any call starts, so that the per-frame path of
the client is a list index and a socket write.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gateway.core import wav

__all__ = ["speech_like", "load_wav", "build_frames"]

# Long enough not to sound like a loop to anything listening; longer calls repeat it.
_MAX_GENERATED_S = 30.0
_PEAK = 0.35 * 32767  # about -9 dBFS, like a telephone talker
_NOISE = 20.0  # a faint line-noise floor (about -64 dBFS), so pauses are not digital zero
# Relative loudness of the first harmonics of the voice, loosely a vowel spectrum.
_HARMONICS = np.array([1.0, 0.7, 0.5, 0.35, 0.25, 0.15, 0.1])


def speech_like(sample_rate: int, seconds: float, seed: int = 0) -> bytes:
    """Mono s16le audio that a voice-activity detector takes for talking: phrases of
    syllables (a gliding voiced tone with harmonics, its loudness modulated at
    syllable rate, 3-7 syllables a second) separated by short pauses.

    The same arguments always give the same bytes. At most 30 s is generated;
    ``build_frames`` loops it for longer calls.
    """
    n = max(1, round(min(seconds, _MAX_GENERATED_S) * sample_rate))
    rng = np.random.default_rng(seed)
    f0 = np.zeros(n)
    weight = np.zeros((len(_HARMONICS), n))
    envelope = np.zeros(n)
    at = 0
    while at < n:
        for _ in range(rng.integers(3, 9)):  # one phrase
            length = int(rng.uniform(0.12, 0.3) * sample_rate)
            end = min(n, at + length)
            if end <= at:
                break
            span = end - at
            start_hz, end_hz = rng.uniform(95, 230), rng.uniform(95, 230)
            f0[at:end] = np.linspace(start_hz, end_hz, span)
            weight[:, at:end] = (_HARMONICS * rng.uniform(0.4, 1.0, len(_HARMONICS)))[:, None]
            envelope[at:end] = np.hanning(length)[:span] * rng.uniform(0.5, 1.0)
            at = end
        # The pause after the phrase: f0 keeps its last value so the phase stays smooth.
        pause = int(rng.uniform(0.15, 0.5) * sample_rate)
        f0[at : at + pause] = f0[at - 1] if at else 120.0
        at += pause
    phase = 2 * np.pi * np.cumsum(f0[:n]) / sample_rate
    orders = np.arange(1, len(_HARMONICS) + 1)[:, None]
    # Harmonics above Nyquist would alias into whistles at 8 kHz; drop them.
    audible = orders * f0[None, :n] < sample_rate / 2
    voice = (weight * audible * np.sin(orders * phase[None, :])).sum(axis=0) * envelope
    peak = np.abs(voice).max()
    signal = voice * (_PEAK / peak) if peak > 0 else voice
    signal += rng.normal(0.0, _NOISE, n)
    return np.clip(np.round(signal), -32768, 32767).astype("<i2").tobytes()


def load_wav(path: str | Path) -> tuple[bytes, int]:
    """Return ``(pcm, sample_rate)`` of a mono 16-bit PCM WAV file; ``ValueError`` if not."""
    pcm, rate = wav.decode_wav(Path(path).read_bytes())
    if not pcm:
        raise ValueError(f"{path}: WAV holds no audio")
    return pcm, rate


def build_frames(pcm: bytes, frame_bytes: int, count: int) -> tuple[bytes, ...]:
    """``count`` frames of ``frame_bytes`` each, taken from ``pcm`` looped as often as needed."""
    if frame_bytes <= 0 or frame_bytes % 2:
        raise ValueError(f"frame_bytes must be a positive even number; got {frame_bytes}")
    pcm = pcm[: len(pcm) // 2 * 2]
    if count <= 0:
        return ()
    if not pcm:
        raise ValueError("no audio to send")
    total = frame_bytes * count
    looped = pcm * -(-total // len(pcm))
    return tuple(looped[i : i + frame_bytes] for i in range(0, total, frame_bytes))
