"""Decoding speed of the media core, and the pipeline's overhead on a mixed folder.

    python benchmarks/bench_media.py            # ~2 minutes on 2 cores
    python benchmarks/bench_media.py --quick

1. Audio: seconds of decoding per second of audio, soundfile (FLAC, MP3) against FFmpeg
   through PyAV (M4A/AAC, M4A/ALAC, MP4 sound track, WebM/Opus), same 60 s signal.
2. Video: frames per second decoded from a 720p H.264 file (to RGB at native size, as the
   frame models receive them), and the same with swscale to 256x256 bicubic (openl3's size).
3. Pipeline overhead on a mixed folder (wav, flac, mp3, m4a, mp4, webm): the run's wall time
   over the models' own time (melspec + madmom), as throughput.py measures it for audio.

Writes benchmarks/results/media.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

from embedkit import audio_io  # noqa: E402
from embedkit import media  # noqa: E402
from tests.conftest import encode_audio, encode_video, write_wav  # noqa: E402


def music(seconds: float, sr: int) -> np.ndarray:
    """Chords with a pulse: something codecs have to work on."""
    t = np.arange(int(seconds * sr)) / sr
    x = sum(0.15 * np.sin(2 * np.pi * f * t) for f in (220, 277.2, 329.6, 440))
    x = (x * (0.6 + 0.4 * (np.sin(2 * np.pi * 2 * t) > 0))
         + 0.01 * np.random.default_rng(0).standard_normal(t.size))
    return x.astype(np.float32)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def audio_rows(folder: Path, seconds: float, repeats: int) -> list[dict]:
    import soundfile as sf

    sr = 44100
    x = music(seconds, sr)
    files = {
        "FLAC (soundfile)": write_wav(folder / "a.flac", x, sr, "PCM_16"),
        "MP3 (soundfile)": folder / "a.mp3",
        "M4A AAC (PyAV)": encode_audio(folder / "a.m4a", x, sr, "aac"),
        "M4A ALAC (PyAV)": encode_audio(folder / "alac.m4a", np.round(x * 32767).astype(np.int16), sr, "alac",
                                        "s16p"),
        "WebM Opus (PyAV)": encode_audio(folder / "a.webm", music(seconds, 48000), 48000, "libopus", "flt"),
    }
    sf.write(files["MP3 (soundfile)"], x, sr, format="MP3")
    frames = np.zeros((int(seconds), 72, 128, 3), np.uint8)
    files["MP4 sound track (PyAV)"] = encode_video(folder / "v.mp4", frames, fps=1, audio=x, sr=sr)
    rows = []
    for name, path in files.items():
        secs = best_of(lambda: audio_io.decode(path), repeats)
        rows.append({"input": name, "seconds_per_audio_second": secs / seconds, "x_realtime": seconds / secs})
    return rows


def video_rows(folder: Path, n_frames: int, repeats: int) -> list[dict]:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (45, 80, 3), dtype=np.uint8)
    # a moving, textured 720p picture (upscaled noise + motion) so the encoder has real work
    frames = np.stack([np.kron(np.roll(base, i, axis=1), np.ones((16, 16, 1), np.uint8))
                       for i in range(n_frames)])
    path = encode_video(folder / "720p.mp4", frames, fps=30)

    def native():
        for chunk in media.iter_frames(path)[1]:
            chunk.rgb()

    def small():
        for chunk in media.iter_frames(path)[1]:
            chunk.rgb(size=(256, 256), interpolation="bicubic")

    rows = []
    for name, fn in (("720p H.264 -> RGB 1280x720", native), ("720p H.264 -> RGB 256x256 bicubic", small)):
        secs = best_of(fn, repeats)
        rows.append({"input": name, "frames_per_second": n_frames / secs})
    return rows


def overhead(folder: Path, seconds: float) -> dict:
    from embedkit import pipeline, registry

    sr = 44100
    mixed = folder / "mixed"
    x = music(seconds, sr)
    write_wav(mixed / "a.wav", x, sr)
    write_wav(mixed / "b.flac", x, sr, "PCM_16")
    import soundfile as sf

    sf.write(mixed / "c.mp3", x, sr, format="MP3")
    encode_audio(mixed / "d.m4a", x, sr, "aac")
    encode_video(mixed / "e.mp4", np.zeros((int(seconds), 72, 128, 3), np.uint8), fps=1, audio=x, sr=sr)
    encode_audio(mixed / "f.webm", music(seconds, 48000), 48000, "libopus", "flt")
    names = ["melspec", "madmom"]
    models = {n: registry.create(n) for n in names}
    for ex in models.values():
        ex.load()
    # the models' own time on the decoded signals
    decoded = [audio_io.load(p) for p in sorted(mixed.iterdir())]
    inputs = {n: [d.at(*ex.resample_key) for d in decoded] for n, ex in models.items()}
    for n, ex in models.items():
        ex.extract(inputs[n][0][: ex.sample_rate], ex.sample_rate)  # warm-up
    t0 = time.perf_counter()
    for n, ex in models.items():
        for audio in inputs[n]:
            ex.extract(audio, ex.sample_rate)
    pure = time.perf_counter() - t0
    jobs = [pipeline.ModelJob(n, ex) for n, ex in models.items()]
    runner = pipeline.Runner(jobs, pipeline.RunOptions(mixed, folder / "out", progress=False, overwrite=True),
                             log=lambda m: None)
    t0 = time.perf_counter()
    stats = runner.run()
    wall = time.perf_counter() - t0
    assert not stats.failures, stats.failures
    return {"files": len(decoded), "seconds_each": seconds, "models": names, "pure_inference_seconds": pure,
            "pipeline_wall_seconds": wall, "pipeline_overhead": wall / pure}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter inputs, fewer repeats")
    args = p.parse_args(argv)
    seconds, n_frames, repeats = (15.0, 90, 2) if args.quick else (60.0, 300, 3)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
            "audio": audio_rows(folder, seconds, repeats),
            "video": video_rows(folder, n_frames, repeats),
            "overhead": overhead(folder, seconds / 2),
        }
    out = ROOT / "benchmarks" / "results" / ("media_quick.json" if args.quick else "media.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| input | s per audio s | x real time |\n|---|---|---|")
    for r in result["audio"]:
        print(f"| {r['input']} | {r['seconds_per_audio_second']:.4f} | {r['x_realtime']:.0f} |")
    print("\n| video | frames per second |\n|---|---|")
    for r in result["video"]:
        print(f"| {r['input']} | {r['frames_per_second']:.0f} |")
    o = result["overhead"]
    print(f"\npipeline_overhead = {o['pipeline_overhead']:.3f} "
          f"({o['files']} mixed files x {o['seconds_each']:.0f} s, "
          f"{'+'.join(o['models'])}: wall {o['pipeline_wall_seconds']:.2f} s "
          f"/ models {o['pure_inference_seconds']:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
