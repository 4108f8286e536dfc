"""Time the resnet18 and r3d18 extractors; compare with the FLOP floor of this machine.

    python benchmarks/bench_torchvision_models.py                    # CPU, random weights, ~3 min on 2 cores
    python benchmarks/bench_torchvision_models.py --threads 1 --video-seconds 8
    python benchmarks/bench_torchvision_models.py --device cuda --images 512 --video-seconds 120

Measures, with architecture-identical random weights unless --resnet18-weights /
--r3d18-weights name files (same cost; the numbers are about speed only):
- the float32 GEMM rate of the device (a 2048^3 matmul): the FLOP floor of a network is
  2 * its multiply-accumulates / that rate (ResNet-18: 1.814 GMAC per 224x224 image,
  R3D-18: 40.697 GMAC per 16x112x112 clip, torchvision's `_ops`);
- resnet18: network-only images/s at several batch sizes; images/s end to end on decoded
  1024x768 pictures as the driver calls the plugin (preprocessing + one image per call);
  video seconds per second for frames at 1 and 5 per second (decode included);
- r3d18: network-only clips/s; video seconds per second end to end on a 320x240 25 fps
  H.264 video (decode, 15 fps frame grid, resize and crop, network).
Prints a table and writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

from embedkit import media  # noqa: E402
from embedkit import registry  # noqa: E402
from embedkit.extractors import r3d18, resnet18  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_of(fn, repeats: int, device: str) -> float:
    """Best wall time of `repeats` calls of fn (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_gflops(device: str, n: int = 2048) -> float:
    """float32 matmul rate (best of 5): the peak the convolutions could reach."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    t = best_of(lambda: a @ b, 5, device)
    return 2 * n**3 / t / 1e9


def interleaved_fraction(net_fn, gmacs: float, device: str, repeats: int, n: int = 2048) -> float:
    """Median over `repeats` of (FLOP floor time / network time), each network run timed right
    after a GEMM run, so that both see the same load on a shared machine."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    net_fn()
    fractions = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        t_gemm = time.perf_counter() - t0
        net_fn()
        sync(device)
        t_net = time.perf_counter() - t0 - t_gemm
        fractions.append((2 * gmacs * 1e9 / (2 * n**3 / t_gemm)) / t_net)
    return float(np.median(fractions))


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synthetic_video(path: Path, seconds: float, fps: int = 25, width: int = 320, height: int = 240) -> Path:
    """Moving gradients and a bouncing square, H.264 crf 23: a cheap stand-in for camera footage."""
    import av

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23"}
        for i in range(int(seconds * fps)):
            t = i / fps
            rgb = np.stack([(xx + 40 * t) % 256, (yy * 0.8 + 25 * t) % 256, (xx + yy + 60 * t) % 256], axis=2)
            x0, y0 = int((width - 40) * (0.5 + 0.5 * np.sin(t))), int((height - 40) * (0.5 + 0.5 * np.cos(t)))
            rgb[y0:y0 + 40, x0:x0 + 40] = 255
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def run_video(ex, path: Path):
    info, chunks = media.iter_frames(path)
    consumer = ex.frame_consumer(info)
    for chunk in chunks:
        consumer.add(chunk)
    return consumer.finish()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--images", type=int, default=16, help="images per timed run")
    ap.add_argument("--video-seconds", type=float, default=8.0, help="length of the synthetic video (s)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up; the best is kept")
    ap.add_argument("--resnet18-weights", default="random")
    ap.add_argument("--r3d18-weights", default="random")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "torchvision_models.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    if device == "auto":
        device = "cpu"
    dev = torch.device(device)
    res: dict = {
        "date": time.strftime("%Y-%m-%d"), "device": device, "cpu": cpu_model(), "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
    }
    rate = gemm_gflops(device)
    res["gemm_gflops"] = round(rate, 1)
    floor_image = 2 * resnet18.GMACS_PER_IMAGE / rate  # seconds per image at the GEMM rate
    floor_clip = 2 * r3d18.GMACS_PER_CLIP / rate
    print(f"device={device} cpu={res['cpu']} threads={res['torch_threads']} torch={torch.__version__}")
    print(f"float32 GEMM: {rate:.0f} GFLOP/s -> FLOP floor {1 / floor_image:.1f} images/s (ResNet-18), "
          f"{1 / floor_clip:.2f} clips/s (R3D-18)")

    # ---------------------------------------------------------------- ResNet-18
    rn = registry.create("resnet18", device=device, weights_path=args.resnet18_weights, precision="float32")
    rn.load()
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (max(args.images, 32), 224, 224, 3), dtype=np.uint8)
    res["resnet18_network_images_per_s"] = {}
    for batch in (1, 8, 32):
        n = min(len(crops), max(batch, args.images))
        n -= n % batch
        rn.batch_size = batch  # images per network call
        t = best_of(lambda: rn.embed_crops(crops[:n]), args.repeats, device)
        res["resnet18_network_images_per_s"][batch] = round(n / t, 2)
    b8 = crops[:8]
    rn.batch_size = 8
    res["resnet18_fraction_of_floor_interleaved"] = round(interleaved_fraction(
        lambda: rn.embed_crops(b8), 8 * resnet18.GMACS_PER_IMAGE, device, 5), 3)
    pictures = [rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8) for _ in range(args.images)]
    t_pre = best_of(lambda: [resnet18.crop_image(p) for p in pictures], args.repeats, device)
    t_img = best_of(lambda: [rn.extract_image(p) for p in pictures], args.repeats, device)
    res["resnet18_preprocess_ms_per_image"] = round(1000 * t_pre / len(pictures), 2)
    res["resnet18_images_per_s_end_to_end"] = round(len(pictures) / t_img, 2)
    best_net = max(res["resnet18_network_images_per_s"].values())
    res["resnet18_floor_images_per_s"] = round(1 / floor_image, 2)
    res["resnet18_fraction_of_floor"] = round(best_net * floor_image, 3)

    with tempfile.TemporaryDirectory() as tmp:
        video = synthetic_video(Path(tmp) / "bench.mp4", args.video_seconds)
        t_decode = best_of(lambda: [c.rgb() for c in media.iter_frames(video)[1]], 1, "cpu")
        res["decode_video_s_per_s"] = round(args.video_seconds / t_decode, 1)
        res["resnet18_frames_video_s_per_s"] = {}
        for fr in (1, 5):
            ex = registry.create("resnet18", device=device, weights_path=args.resnet18_weights,
                                 frame_rate=fr, precision="float32")
            t = best_of(lambda ex=ex: run_video(ex, video), 1, device)
            res["resnet18_frames_video_s_per_s"][fr] = round(args.video_seconds / t, 2)

        # ---------------------------------------------------------------- R3D-18
        v = registry.create("r3d18", device=device, weights_path=args.r3d18_weights, precision="float32")
        v.load()
        clips = rng.integers(0, 256, (4, 16, 112, 112, 3), dtype=np.uint8)
        batch = 1 if dev.type == "cpu" else 4  # (the CPU runs one clip per call whatever batch_size)
        t = best_of(lambda: v.embed_clips(clips[:max(batch, 2)]), args.repeats, device)
        res["r3d18_network_clips_per_s"] = round(max(batch, 2) / t, 3)
        res["r3d18_fraction_of_floor_interleaved"] = round(interleaved_fraction(
            lambda: v.embed_clips(clips[:1]), r3d18.GMACS_PER_CLIP, device, 3), 3)
        res["r3d18_floor_clips_per_s"] = round(1 / floor_clip, 3)
        res["r3d18_fraction_of_floor"] = round(res["r3d18_network_clips_per_s"] * floor_clip, 3)
        frames = [c.rgb() for c in media.iter_frames(video)[1]]
        frames = [f for chunk in frames for f in chunk][:64]
        t_resize = best_of(lambda: r3d18.crop_frames(frames), 1, "cpu")
        res["r3d18_resize_ms_per_frame"] = round(1000 * t_resize / len(frames), 2)
        t = best_of(lambda: run_video(v, video), 1, device)
        out = run_video(v, video)
        res["r3d18_clips"] = int(out.data.shape[0])
        res["r3d18_video_s_per_s"] = round(args.video_seconds / t, 3)
        res["r3d18_floor_video_s_per_s"] = round(args.video_seconds / (res["r3d18_clips"] * floor_clip), 3)

    # The GEMM rate again at the end (the machine may be shared): the best of both sets the floor.
    rate = max(rate, gemm_gflops(device))
    res["gemm_gflops"] = round(rate, 1)
    floor_image, floor_clip = 2 * resnet18.GMACS_PER_IMAGE / rate, 2 * r3d18.GMACS_PER_CLIP / rate
    res["resnet18_floor_images_per_s"] = round(1 / floor_image, 2)
    res["resnet18_fraction_of_floor"] = round(best_net * floor_image, 3)
    res["r3d18_floor_clips_per_s"] = round(1 / floor_clip, 3)
    res["r3d18_fraction_of_floor"] = round(res["r3d18_network_clips_per_s"] * floor_clip, 3)
    res["r3d18_floor_video_s_per_s"] = round(args.video_seconds / (res["r3d18_clips"] * floor_clip), 3)
    fr, fv = res["resnet18_fraction_of_floor_interleaved"], res["r3d18_fraction_of_floor_interleaved"]
    print(f"float32 GEMM (best of start and end): {rate:.0f} GFLOP/s; network time vs FLOP floor, "
          f"interleaved with GEMM runs: resnet18 (batch 8) {fr:.0%}, r3d18 (1 clip) {fv:.0%}")

    r = res
    print(f"resnet18 network images/s by batch: {r['resnet18_network_images_per_s']} "
          f"(floor {r['resnet18_floor_images_per_s']}, best = {r['resnet18_fraction_of_floor']:.0%} of it)")
    print(f"resnet18 end to end (1024x768 decoded, one image per call): "
          f"{r['resnet18_images_per_s_end_to_end']} images/s; preprocessing "
          f"{r['resnet18_preprocess_ms_per_image']} ms/image")
    print(f"resnet18 video frames (320x240 25 fps): video s per s at 1 and 5 frames/s: "
          f"{r['resnet18_frames_video_s_per_s']}; decoding alone {r['decode_video_s_per_s']} video s/s")
    print(f"r3d18 network {r['r3d18_network_clips_per_s']} clips/s (floor {r['r3d18_floor_clips_per_s']}, "
          f"{r['r3d18_fraction_of_floor']:.0%} of it); resize+crop {r['r3d18_resize_ms_per_frame']} ms/frame")
    print(f"r3d18 end to end: {r['r3d18_video_s_per_s']} video s per s ({r['r3d18_clips']} clips of "
          f"{args.video_seconds:.0f} s; floor {r['r3d18_floor_video_s_per_s']})")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), **res}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
