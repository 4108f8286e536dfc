#!/usr/bin/env python
"""Screenshots of `embedkit browse` for the README, taken in Debian's headless Chromium.

    python examples/browse_screenshots.py [--work /tmp/browse_shots] [--dest docs/images]

Builds two collections the way a user would (the bundled example with configs/example_study.yaml;
espeak-ng voices, examples/make_voices.py --per_voice 3, extracted with melspec), indexes them
(`embedkit search index`), serves each with run_browse.py and captures:
  browse_map.png      the map of the voices, coloured by gender (--labels speakers.csv)
  browse_item.png     the item page of examples/audio/beat_120bpm.flac: player, CREPE's f0,
                      madmom's beats, melspec frames, the pooled vector, neighbours
  browse_compare.png  the model comparison on the voices' labels (probe and retrieval)
Needs espeak-ng, chromium, chromium-driver, selenium and requirements-ui.txt.
"""

from __future__ import annotations

import argparse
import selectors
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import _checkout  # noqa: E402,F401  (the checkout as the package embedkit)

sys.path.insert(0, str(ROOT / "examples"))
import make_voices  # noqa: E402

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1200,860",
]


def sh(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True, cwd=ROOT)


def serve(out: Path, *args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_browse.py"), str(out), "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while sel.select(timeout=300):
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("run_browse.py exited")
        if "http://" in line:
            return proc, "http://" + line.split("http://", 1)[1].split()[0]
    raise SystemExit("no URL from run_browse.py")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "browse_shots"))
    p.add_argument("--dest", default=str(ROOT / "docs" / "images"))
    args = p.parse_args()
    work, dest = Path(args.work), Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    ex = work / "example"
    if not (ex / "melspec" / ".search").is_dir():
        sh(
            "run_extraction.py",
            "--config",
            "configs/example_study.yaml",
            "--output_base",
            str(ex),
            "--no_progress",
        )
        sh("run_search.py", "index", "--output_base", str(ex), "--model", "melspec", "--quiet")
    voices = work / "voices"
    if not (voices / "out" / "melspec" / ".search").is_dir():
        make_voices.synthesise_speakers(voices, per_gender=8, per_voice=3)
        (voices / "study.yaml").write_text(
            f"audio_dir: {voices / 'speakers'}\noutput_base: {voices / 'out'}\nrecursive: true\nmodels:\n"
            "  melspec:\n    n_mels: 64\n"
            "  melspec_mean:\n    extractor: melspec\n    n_mels: 128\n    n_fft: 1024\n    pooling: mean\n"
        )
        sh("run_extraction.py", "--config", str(voices / "study.yaml"), "--no_progress")
        for model in ("melspec", "melspec_mean"):
            sh("run_search.py", "index", "--output_base", str(voices / "out"), "--model", model, "--quiet")

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}")
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)

    def until(script: str) -> None:
        WebDriverWait(driver, 120, poll_frequency=0.05).until(lambda d: d.execute_script(script))

    try:
        proc, url = serve(voices / "out", "--labels", str(voices / "speakers.csv"), "--model", "melspec")
        try:
            driver.get(url + "map?model=melspec")
            until("return +document.getElementById('map').dataset.drawn > 0")
            w, h, px, py = driver.execute_script(
                "const c = document.getElementById('map');"
                "return [c.clientWidth, c.clientHeight, ...c.ekScreen(5)];"
            )
            from selenium.webdriver.common.action_chains import ActionChains

            ActionChains(driver).move_to_element_with_offset(
                driver.find_element("id", "map"), int(px - w / 2), int(py - h / 2)
            ).perform()
            until("return !document.getElementById('tooltip').hidden")
            driver.save_screenshot(str(dest / "browse_map.png"))
            driver.get(url + "compare")
            until(
                "const i = document.getElementById('comparison-chart');"
                "return i.complete && i.naturalWidth > 0"
            )
            driver.save_screenshot(str(dest / "browse_compare.png"))
        finally:
            proc.terminate()
            proc.wait(60)
        proc, url = serve(ex)
        try:
            driver.get(url + "item/beat_120bpm.flac")
            until(
                "const p = document.getElementById('player'); return p.readyState >= 1 && "
                "document.getElementById('panels').dataset.panels"
            )
            driver.set_window_size(1200, 1150)
            driver.execute_async_script(
                "const done = arguments[0], p = document.getElementById('player');"
                "p.addEventListener('seeked', () => requestAnimationFrame(() => done()), {once: true});"
                "p.currentTime = 2.2;"
            )
            driver.save_screenshot(str(dest / "browse_item.png"))
        finally:
            proc.terminate()
            proc.wait(60)
    finally:
        driver.quit()
    print(f"wrote {dest}/browse_map.png, browse_item.png, browse_compare.png")


if __name__ == "__main__":
    main()
