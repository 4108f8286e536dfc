#!/usr/bin/env python
"""How fast `embedkit browse` opens a large collection: the map page of a 100,000-item index.

    python benchmarks/browse_bench.py [--n 100000] [--dim 512] [--work /tmp/browse_bench]

Writes a model folder the way the driver does (N pooled vectors of DIM float32 in 20 sub-folders,
one cluster each, features.json, manifest.jsonl, run_report.json), indexes it with
`embedkit search index` (HNSW from 100,000 vectors), starts `run_browse.py` and drives Debian's
headless Chromium through chromedriver. Measured, wall clock:
  server start    process start -> the URL line (reads the manifest, opens the index)
  map, cold       navigation -> every point drawn, projection computed (PCA) and cached beside the index
  map, warm       the same page again (the projection from memory)
  map, restarted  a new server process, the projection read from its cache file
  item page       an item page with its 10 nearest neighbours (HNSW) listed
Results: benchmarks/results/browse_100k.json. The folder under --work is kept for reruns.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
]


def make_collection(work: Path, n: int, dim: int, seed: int = 0) -> Path:
    out = work / "out"
    if (out / "emb" / "features.json").is_file() and (out / "manifest.jsonl").is_file():
        return out
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim)).astype(np.float32) * 2
    (work / "media").mkdir(parents=True, exist_ok=True)
    manifest = []
    for i in range(n):
        c = i % 20
        rel = f"cluster{c:02d}/item{i:06d}"
        path = out / "emb" / f"{rel}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, centres[c] + rng.normal(size=dim).astype(np.float32))
        manifest.append(
            json.dumps(
                {
                    "run": "bench",
                    "model": "emb",
                    "source": f"{rel}.wav",
                    "output": f"emb/{rel}.npy",
                    "shape": [dim],
                    "dtype": "float32",
                    "kind": "audio",
                    "audio_seconds": 1.0,
                }
            )
        )
    (out / "manifest.jsonl").write_text("\n".join(manifest) + "\n")
    meta = {
        "extractor": "melspec",
        "output_folder": "emb",
        "axes": ["dim"],
        "dtype": "float32",
        "hop_seconds": None,
        "first_frame_seconds": 0.0,
        "columns": None,
        "params": {"n_mels": dim, "pooling": "mean"},
        "weights_setting": None,
        "provenance": {},
    }
    (out / "emb" / "features.json").write_text(json.dumps(meta))
    (out / "run_report.json").write_text(json.dumps({"audio_dir": str(work / "media")}))
    return out


def start_server(out: Path, log: Path) -> tuple[subprocess.Popen, str, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_browse.py"), str(out), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=open(log, "w"),
        text=True,
    )
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while sel.select(timeout=600):
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"browse exited: {log.read_text()}")
        if "http://" in line:
            return proc, "http://" + line.split("http://", 1)[1].split()[0], time.perf_counter() - t0
    raise SystemExit("no URL")


def timed_map(driver, url: str, n: int) -> float:
    from selenium.webdriver.support.ui import WebDriverWait

    t0 = time.perf_counter()
    driver.get(url + "map")
    WebDriverWait(driver, 600, poll_frequency=0.02).until(
        lambda d: d.execute_script("const m = document.getElementById('map'); return m && +m.dataset.drawn")
    )
    seconds = time.perf_counter() - t0
    drawn = int(driver.execute_script("return +document.getElementById('map').dataset.drawn"))
    assert drawn == n, (drawn, n)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "browse_bench"))
    args = p.parse_args()
    work = Path(args.work)
    t0 = time.perf_counter()
    out = make_collection(work, args.n, args.dim)
    made = time.perf_counter() - t0
    from embedkit import run_search

    t0 = time.perf_counter()
    assert run_search.main(["index", "--output_base", str(out), "--model", "emb", "--quiet"]) == 0
    indexed = time.perf_counter() - t0
    for cache in (out / "emb" / ".search").glob("*.browse-map-*.npz"):
        cache.unlink()  # a cold map each run
    item = "cluster03/item000003.wav"
    (work / "media" / "cluster03").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "examples" / "audio" / "sweep_110_880.wav", work / "media" / item)

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for f in FLAGS:
        opts.add_argument(f)
    profile = tempfile.mkdtemp(prefix="chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    res: dict = {
        "n": args.n,
        "dim": args.dim,
        "collection_written_s": round(made, 1),
        "index_built_s": round(indexed, 1),
    }
    try:
        proc, url, res["server_start_s"] = start_server(out, work / "server.log")
        try:
            res["map_cold_s"] = timed_map(driver, url, args.n)
            res["map_warm_s"] = timed_map(driver, url, args.n)
            t0 = time.perf_counter()
            driver.get(url + "item/" + item)
            WebDriverWait(driver, 120, poll_frequency=0.02).until(
                lambda d: len(d.find_elements("css selector", "li.neighbour")) == 10
            )
            res["item_page_s"] = time.perf_counter() - t0
            import urllib.request

            with urllib.request.urlopen(url + "api/map") as r:
                res["map_json_bytes"] = len(r.read())
        finally:
            proc.terminate()
            proc.wait(60)
        proc, url, res["server_restart_s"] = start_server(out, work / "server2.log")
        try:
            res["map_restarted_s"] = timed_map(driver, url, args.n)
        finally:
            proc.terminate()
            proc.wait(60)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    res = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in res.items()}
    res["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    res["log"] = (work / "server.log").read_text().strip().splitlines()
    dest = ROOT / "benchmarks" / "results" / f"browse_{args.n // 1000}k.json"
    dest.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
