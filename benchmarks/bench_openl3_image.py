"""Speed of the OpenL3 image plugin: images per second, video frames per second, FLOP floor.

Architecture-identical random weights unless --weights is given (speed does not
depend on the values). Three measurements:

1. network alone on preprocessed 224x224 batches, embedding sizes 512 and 8192
   (the same network: only the final pool differs), images per second and the
   convolutions' GFLOP/s against the FLOP count of one image;
2. whole images through `extract_image` (openl3's preprocessing: a 1024x768
   photo is rescaled to 341x256 and centre-cropped, then embedded): images/s;
3. a synthetic video (default 640x360, 25 fps, 4 s) through the plugin's frame
   consumer as the driver feeds it (`media.iter_frames`: decode in a background
   thread, ffmpeg's 256x256 bicubic scale, crop, network): frames/s, and the
   process's peak RSS before/after (memory must not grow with the video's length);
4. interleaved with the OpenL3 audio network (mel256, 20.4 GFLOP per window, the same
   oneDNN convolutions): the ratio of their GFLOP/s, which contention on a shared machine
   affects equally, so idle figures of one carry over to the other.

    python benchmarks/bench_openl3_image.py
    python benchmarks/bench_openl3_image.py --images 32 --video-seconds 20 \
        --json benchmarks/results/openl3_image.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

from embedkit import media  # noqa: E402
from embedkit import registry  # noqa: E402
from embedkit.openl3 import network as net  # noqa: E402
from embedkit.openl3 import preprocessing  # noqa: E402
from embedkit.openl3 import weightfiles as wf  # noqa: E402


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_video(path: Path, seconds: float, fps: int, size: tuple[int, int]) -> int:
    """A synthetic H.264 video (moving gradients and noise); returns its frame count."""
    import av

    w, h = size
    n = int(seconds * fps)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast"}
        for i in range(n):
            img = np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, (xx ^ yy) % 256], -1)
            img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32, help="images per timing (default 32)")
    ap.add_argument("--batch-size", type=int, default=16, help="images per forward pass (plugin default 16)")
    ap.add_argument("--video-seconds", type=float, default=4.0)
    ap.add_argument("--video-fps", type=int, default=25)
    ap.add_argument("--video-size", default="640x360", help="WxH of the synthetic video")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--weights", default="random", help="image weights path, or 'random' (default)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds against the audio network")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    result: dict = {
        "date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
        "load_average_at_start": round(load, 2), "weights": args.weights, "batch_size": args.batch_size,
        "flops_per_image": net.FLOPS_PER_IMAGE,
    }
    print(f"openl3_image benchmark: {result['cpu']}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}, load average {load:.2f} at start")
    print(f"FLOPs per image (8 convolutions, 2 per multiply-add): {net.FLOPS_PER_IMAGE / 1e9:.2f} GFLOP")

    plugins = {d: registry.create("openl3_image", device=args.device, weights_path=args.weights,
                                  batch_size=args.batch_size, embedding_size=d) for d in (512, 8192)}
    model = plugins[512].load()
    rng = np.random.default_rng(0)
    x = rng.random((args.images, 224, 224, 3), dtype=np.float32)
    net.run_image_network(model, x[:2], 512, "float32")  # warm-up (allocator, oneDNN kernels)

    # 1. the network alone
    for d in (512, 8192):
        t0 = time.perf_counter()
        plugins[d].embed_images(x)
        dt = time.perf_counter() - t0
        ips = args.images / dt
        gflops = net.FLOPS_PER_IMAGE * ips / 1e9
        result[f"network_images_per_s_{d}"] = round(ips, 3)
        result[f"network_gflops_{d}"] = round(gflops, 1)
        print(f"network alone, {d:>4}-d: {ips:7.2f} images/s  ({dt / args.images * 1000:6.1f} ms/image, "
              f"{gflops:6.1f} GFLOP/s)")

    # 2. whole images (preprocessing included): a 1024x768 photo, openl3's rescale + crop
    photo = rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    for d in (512, 8192):
        t0 = time.perf_counter()
        for _ in range(args.images):
            plugins[d].extract_image(photo)
        dt = time.perf_counter() - t0
        result[f"extract_image_per_s_{d}"] = round(args.images / dt, 3)
        print(f"extract_image (1024x768, one at a time), {d:>4}-d: {args.images / dt:7.2f} images/s")
    t0 = time.perf_counter()
    for _ in range(args.images):
        preprocessing.preprocess_image_batch(photo)
    pre = (time.perf_counter() - t0) / args.images
    result["preprocess_ms_1024x768"] = round(pre * 1000, 2)
    print(f"  of which openl3's preprocessing: {pre * 1000:.1f} ms/image")

    # 3. video frames through the frame consumer, as the driver feeds them
    w, h = (int(v) for v in args.video_size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.mp4"
        n = write_video(path, args.video_seconds, args.video_fps, (w, h))
        rss0 = peak_rss_mb()
        t0 = time.perf_counter()
        t_scale = 0.0
        info, chunks = media.iter_frames(path, chunk_frames=16)
        consumer = plugins[512].frame_consumer(info)
        convert = media.FrameChunk.rgb  # the plugin scales frames as it converts them (chunk.rgb)

        def timed(chunk, *a, **kw):
            nonlocal t_scale
            s0 = time.perf_counter()
            out = convert(chunk, *a, **kw)
            t_scale += time.perf_counter() - s0
            return out

        media.FrameChunk.rgb = timed
        try:
            for chunk in chunks:
                consumer.add(chunk)
            feats = consumer.finish()
        finally:
            media.FrameChunk.rgb = convert
        dt = time.perf_counter() - t0
        assert feats.data.shape[0] == n
        rss1 = peak_rss_mb()
    fps = n / dt
    result.update({
        "video": f"{w}x{h} {args.video_fps} fps {args.video_seconds:g} s H.264 ({n} frames)",
        "video_frames_per_s": round(fps, 3), "video_scale_ms_per_frame": round(t_scale / n * 1000, 2),
        "peak_rss_mb_before_video": round(rss0), "peak_rss_mb_after_video": round(rss1),
    })
    print(f"video {w}x{h}, {n} frames: {fps:.2f} frames/s end to end (decode thread + 256x256 scale "
          f"{t_scale / n * 1000:.1f} ms/frame + network); peak RSS {rss0:.0f} -> {rss1:.0f} MB")
    # 4. interleaved with the audio network: a contention-independent ratio

    audio = wf.load_network("mel256", "music", args.device, "random")
    spec = rng.standard_normal((args.batch_size, 256, 199)).astype(np.float32) * 10 - 40
    net.run_network(audio, spec[:2], "mel256", 512)
    t_audio = t_image = 0.0
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        net.run_network(audio, spec, "mel256", 512)
        t1 = time.perf_counter()
        net.run_image_network(model, x[: args.batch_size], 512)
        t_image += time.perf_counter() - t1
        t_audio += t1 - t0
    # FLOPs of one window's convolutions (as bench_openl3.py)
    f, t = preprocessing.spectrogram_shape("mel256")
    audio_flops = 0.0
    for i, (c_in, c_out) in enumerate(zip((1,) + net.CHANNELS[:-1], net.CHANNELS)):
        audio_flops += 2 * 9 * c_in * c_out * f * t
        if i in (1, 3, 5):
            f, t = f // 2, t // 2
    g_audio = audio_flops * args.batch_size * args.rounds / t_audio / 1e9
    g_image = net.FLOPS_PER_IMAGE * args.batch_size * args.rounds / t_image / 1e9
    result.update({"interleaved_gflops_audio_mel256": round(g_audio, 1),
                   "interleaved_gflops_image": round(g_image, 1),
                   "image_over_audio_gflops": round(g_image / g_audio, 3)})
    print(f"interleaved, {args.rounds} x {args.batch_size}: audio network {g_audio:.1f} GFLOP/s, "
          f"image network {g_image:.1f} GFLOP/s, ratio {g_image / g_audio:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
