"""Regenerate the bundled example audio (deterministic; a few seconds each, < 1 MB in all).

    python examples/make_examples.py
"""

from pathlib import Path

import numpy as np
import soundfile as sf

OUT = Path(__file__).resolve().parent / "audio"


def clicks_and_melody(sr: int = 44100, seconds: float = 6.0, bpm: float = 120.0) -> np.ndarray:
    """Decaying noise clicks on every beat plus a sine melody (A3 C4 E4 A4, one note per beat)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(sr * seconds)) / sr
    out = np.zeros_like(t)
    beat = 60.0 / bpm
    notes = [220.0, 261.63, 329.63, 440.0]
    for k, start in enumerate(np.arange(0, seconds, beat)):
        i = int(start * sr)
        n = int(0.03 * sr)
        out[i:i + n] += (0.6 * rng.standard_normal(min(n, len(out) - i))
                         * np.exp(-np.arange(min(n, len(out) - i)) / (0.005 * sr)))
        j = min(len(out), i + int(beat * sr))
        f = notes[k % len(notes)]
        out[i:j] += 0.3 * np.sin(2 * np.pi * f * (t[i:j] - start))
    return out


def sweep(sr: int = 22050, seconds: float = 4.0, f0: float = 110.0, f1: float = 880.0) -> np.ndarray:
    """Exponential sine sweep f0 -> f1."""
    t = np.arange(int(sr * seconds)) / sr
    k = np.log(f1 / f0) / seconds
    return 0.5 * np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)


def stereo_chord(sr: int = 48000, seconds: float = 3.0) -> np.ndarray:
    """C major triad, root left and fifth right, third in both."""
    t = np.arange(int(sr * seconds)) / sr
    c, e, g = (np.sin(2 * np.pi * f * t) for f in (261.63, 329.63, 392.0))
    return 0.25 * np.stack([c + e, e + g], axis=1)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    sf.write(OUT / "beat_120bpm.flac", clicks_and_melody(), 44100, subtype="PCM_16")
    sf.write(OUT / "sweep_110_880.wav", sweep(), 22050, subtype="PCM_16")
    sf.write(OUT / "chord_stereo.ogg", stereo_chord(), 48000)
    for p in sorted(OUT.iterdir()):
        print(p.name, p.stat().st_size)
