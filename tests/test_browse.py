"""`embedkit browse` in a real headless Chromium (Debian's, driven by chromedriver through Selenium).

The collection is the espeak-ng speakers (conftest.speaker_collection), copied so these tests can
change it: one file is replaced by a symlink leading out of the input folder, one model folder's
features.json is changed after indexing (an index of another configuration), one model folder has
no index. Truth comes from the arrays themselves: the neighbours a page lists are numpy's cosine
ranking of the mean-pooled frames; a query with a copy of a collection file finds that file at
cosine 1. The server runs as the user runs it (run_browse.py, --port 0) and is waited for by the
line that gives its URL.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT, need_tool, run_cli

from embedkit import run_search, search

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
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


def need_ui() -> None:
    need_tool(importlib.util.find_spec("flask") is not None, "Flask (pip install -r requirements-ui.txt)")


class Server:
    """run_browse.py in a subprocess; ready when it prints its URL."""

    def __init__(
        self, out: Path, *args: str, env: dict | None = None, log: Path, timeout: float = 120
    ) -> None:
        self.log = log
        self.err = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run_browse.py"), str(out), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.url = self._wait_for_url(timeout)
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname, parts.port

    def _wait_for_url(self, timeout: float) -> str:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not sel.select(timeout=deadline - time.monotonic()):
                break
            line = self.proc.stdout.readline()
            if not line:  # it exited
                self.proc.wait(10)
                raise AssertionError(f"browse exited {self.proc.returncode}: {self.log.read_text()}")
            if "serving" in line and "http://" in line:
                return "http://" + line.split("http://", 1)[1].split()[0]
        raise AssertionError(f"no URL within {timeout} s: {self.log.read_text()}")

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        """GET exactly `path` (no normalisation by a client library)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request("GET", path, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(60)
        self.err.close()
        return code


@pytest.fixture(scope="module")
def site(speaker_collection, tmp_path_factory):
    need_ui()
    root = tmp_path_factory.mktemp("site")
    shutil.copytree(speaker_collection["root"], root / "c", symlinks=True)
    c = root / "c"
    out, inp = c / "out", c / "speakers"
    outside = root / "outside"
    outside.mkdir()
    shutil.move(inp / "male" / "m1_2.wav", outside / "m1_2.wav")  # a symlink out of the input folder
    (inp / "male" / "m1_2.wav").symlink_to(outside / "m1_2.wav")
    records = [json.loads(ln) for ln in (out / "manifest.jsonl").read_text().splitlines() if ln.strip()]
    for name in ("stale", "unindexed"):  # copies of melspec_mean, with their manifest records
        shutil.copytree(out / "melspec_mean", out / name, ignore=shutil.ignore_patterns(".search"))
        with open(out / "manifest.jsonl", "a") as f:
            for rec in records:
                if rec.get("model") == "melspec_mean" and rec.get("output"):
                    rec = {**rec, "model": name, "output": name + rec["output"][len("melspec_mean"):]}
                    f.write(json.dumps(rec) + "\n")
    assert run_search.main(["index", "--output_base", str(out), "--model", "stale", "--quiet"]) == 0
    meta = json.loads((out / "stale" / "features.json").read_text())
    meta["params"]["n_mels"] = 96  # re-extracted with other settings since the index was built
    (out / "stale" / "features.json").write_text(json.dumps(meta))
    tmp = root / "tmp"
    tmp.mkdir()
    server = Server(
        out,
        "--audio_dir",
        str(inp),
        "--labels",
        str(c / "speakers.csv"),
        "--model",
        "melspec",
        "--max_upload_mb",
        "1",
        env={"TMPDIR": str(tmp)},
        log=root / "server.log",
    )
    yield {"server": server, "out": out, "input": inp, "labels": c / "speakers.csv", "tmp": tmp, "root": root}
    code = server.stop()
    assert code == 0 and "stopped" in server.log.read_text()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    need_ui()
    need_tool(os.path.exists(CHROMIUM), "chromium (apt-get install chromium)")
    need_tool(os.path.exists(CHROMEDRIVER), "chromedriver (apt-get install chromium-driver)")
    need_tool(importlib.util.find_spec("selenium") is not None, "selenium (requirements-test.txt)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 60):
    """Until `script` (JS returning a value) is truthy; returns that value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: d.execute_script(script))


def numpy_neighbours(out: Path, source: str, sources: list[str]) -> list[tuple[str, float]]:
    """Cosine ranking of mean-pooled melspec frames, from the arrays (the item itself left out)."""
    vec = {
        s: np.load(out / "melspec" / Path(s).with_suffix(".npy")).astype(np.float64).mean(axis=0)
        for s in sources
    }
    unit = {s: v / np.linalg.norm(v) for s, v in vec.items()}
    scores = [(s, float(unit[s] @ unit[source])) for s in sources if s != source]
    return sorted(scores, key=lambda p: -p[1])


def same_origin_only(driver, base: str) -> None:
    urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(base) for u in urls), urls


# -- pages in the browser --------------------------------------------------------------------------
def test_item_page_lists_the_nearest_neighbours_and_its_player_seeks(site, browser):
    s = site["server"]
    sources = sorted(p.relative_to(site["input"]).as_posix() for p in site["input"].rglob("*.wav"))
    browser.get(s.url + "item/female/f3_1.wav")
    names = [e.text for e in browser.find_elements("css selector", "li.neighbour .name")]
    scores = [
        float(e.get_attribute("data-score")) for e in browser.find_elements("css selector", "li.neighbour")
    ]
    truth = numpy_neighbours(site["out"], "female/f3_1.wav", sources)[:10]
    assert names == [p for p, _ in truth]
    assert np.allclose(scores, [sc for _, sc in truth], atol=1e-5)
    # the player: present, its metadata loads, and it seeks (HTTP Range through Chromium's media stack)
    assert browser.find_element("css selector", "audio#player")
    duration = wait_for(
        browser,
        "const p = document.getElementById('player'); "
        "return p.readyState >= 1 && isFinite(p.duration) ? p.duration : null",
    )
    info = sf.info(site["input"] / "female" / "f3_1.wav")
    assert abs(duration - info.frames / info.samplerate) < 0.05
    got = browser.execute_async_script(
        "const done = arguments[0], p = document.getElementById('player');"
        "p.addEventListener('seeked', () => done([p.currentTime, p.seekable.end(0)]), {once: true});"
        "p.currentTime = 2.0;"
    )
    assert abs(got[0] - 2.0) < 0.05 and got[1] > 2.0
    assert len(browser.find_elements("css selector", "li.neighbour audio.player")) == 10
    # what the run wrote, drawn: the frames as a heat map and the pooled vector
    kinds = wait_for(
        browser,
        "const b = document.getElementById('panels'); return b.dataset.panels && "
        "[...b.querySelectorAll('.panel')].map(p => p.dataset.model + ':' + p.dataset.kind)",
    )
    assert sorted(kinds) == ["melspec:heatmap", "melspec_mean:vector", "stale:vector", "unindexed:vector"]
    same_origin_only(browser, s.url)


def test_map_shows_every_point_the_index_holds(site, browser):
    s = site["server"]
    base = site["out"] / "melspec" / ".search"
    for name in ("melspec_file", "melspec_segment_1s"):
        with search.Index.open(base, name) as index:
            n = len(index)
        browser.get(f"{s.url}map?model=melspec&c={name}")
        drawn = wait_for(browser, "const m = document.getElementById('map'); return +m.dataset.drawn || null")
        assert drawn == n, (name, drawn, n)
        legend = [e.text for e in browser.find_elements("css selector", "#legend li")]
        assert legend == ["female (24)", "male (24)"] or name != "melspec_file", (
            legend
        )  # coloured by --labels
    assert n > 48  # segment level: one point per 1 s window
    # hover a point: its name; click: its item page
    browser.get(f"{s.url}map?model=melspec")
    wait_for(browser, "return +document.getElementById('map').dataset.drawn")
    from selenium.webdriver.common.action_chains import ActionChains

    w, h, px, py = browser.execute_script(  # where point 0 is drawn, in canvas pixels
        "const c = document.getElementById('map'); return [c.clientWidth, c.clientHeight, ...c.ekScreen(0)];"
    )
    canvas = browser.find_element("id", "map")
    ActionChains(browser).move_to_element_with_offset(canvas, int(px - w / 2), int(py - h / 2)).perform()
    name = wait_for(
        browser, "const t = document.getElementById('tooltip'); return !t.hidden && t.textContent"
    )
    path = name.split(" · ")[0]
    ActionChains(browser).click().perform()
    wait_for(browser, "return location.pathname.startsWith('/item/')")
    assert browser.find_element("id", "item-name").text.split()[0] == path
    assert browser.find_elements("css selector", "li.neighbour")


def test_segment_neighbours_are_moments_and_their_players_start_there(site, browser):
    s = site["server"]
    browser.get(s.url + "item/female/f2_0.wav?model=melspec&c=melspec_segment_1s&t=1.5")
    rows = browser.find_elements("css selector", "li.neighbour")
    assert len(rows) == 10 and all(r.find_element("css selector", ".span").text for r in rows)
    # the moment at 1.5 s is the query: its nearest moments, from the index directly
    with search.Index.open(site["out"] / "melspec" / ".search", "melspec_segment_1s") as index:
        _, vecs, starts, ends = index.vectors_of("female/f2_0.wav")
        row = int(np.flatnonzero((starts <= 1.5) & (1.5 < ends))[0])
        truth = index.search(vecs[row], 10, exclude={"female/f2_0.wav"})
    assert [r.find_element("css selector", ".name").text for r in rows] == [h.path for h in truth]
    src = rows[0].find_element("css selector", "audio").get_attribute("src")
    assert f"#t={truth[0].start:.3f}" in src
    start = browser.execute_async_script(
        "const done = arguments[0], a = document.querySelector('li.neighbour audio');"
        "a.addEventListener('loadedmetadata', () => done(a.currentTime), {once: true});"
        "a.preload = 'metadata'; a.load();"
    )
    assert abs(start - truth[0].start) < 0.05  # the media fragment: the player starts at the moment


def test_query_by_upload_finds_the_file_itself_and_keeps_nothing(site, browser, tmp_path):
    s = site["server"]
    copy = tmp_path / "a copy of f5_2.wav"
    shutil.copy(site["input"] / "female" / "f5_2.wav", copy)
    before = sorted(str(p) for p in site["out"].rglob("*"))
    browser.get(s.url + "query?model=melspec")
    browser.find_element("id", "query-file").send_keys(str(copy))
    browser.find_element("id", "query-submit").click()
    wait_for(
        browser, "return document.getElementById('query-name') || document.getElementById('query-error')"
    )
    first = browser.find_element("css selector", "li.neighbour")
    assert first.find_element("css selector", ".name").text == "female/f5_2.wav"
    assert float(first.get_attribute("data-score")) > 0.9999
    assert list(site["tmp"].iterdir()) == []  # the upload went with its query
    assert sorted(str(p) for p in site["out"].rglob("*")) == before  # nothing written into the outputs
    # over the limit (--max_upload_mb 1): one line, and the server goes on
    status, body = post_file(s, "/query?model=melspec", b"RIFF" + bytes(2 * 2**20), "big.wav")
    assert status == 413 and b"larger than the limit of 1 MB" in body
    assert s.get("/map")[0] == 200


def post_file(s: Server, path: str, payload: bytes, name: str) -> tuple[int, bytes]:
    boundary = "----embedkittest"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    conn = http.client.HTTPConnection(s.host, s.port, timeout=60)
    try:
        conn.request(
            "POST",
            path,
            body,
            {"Content-Type": f"multipart/form-data; boundary={boundary}", "Host": f"{s.host}:{s.port}"},
        )
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_comparison_page_shows_the_probe_per_model(site, browser):
    browser.get(site["server"].url + "compare")
    rows = {
        r.get_attribute("data-model"): r
        for r in browser.find_elements("css selector", "#comparison tbody tr")
    }
    assert {"melspec", "melspec_mean"} <= set(rows)
    for m in ("melspec", "melspec_mean"):
        assert float(rows[m].find_element("css selector", ".acc").text) >= 0.9
    assert wait_for(
        browser,
        "const i = document.getElementById('comparison-chart'); return i.complete && i.naturalWidth > 0",
    )


# -- safety: only the collection's files -----------------------------------------------------------
def test_traversal_absolute_paths_and_symlinks_out_are_refused(site):
    s = site["server"]
    secret = Path("/etc/hostname").read_bytes() if Path("/etc/hostname").is_file() else b"\x00never"
    outside = (site["root"] / "outside" / "m1_2.wav").read_bytes()
    attempts = [
        "/media/../../../../etc/hostname",
        "/media/%2e%2e/%2e%2e/%2e%2e/etc/hostname",
        "/media/female/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/hostname",
        "/media/female/..%2f..%2f..%2fetc%2fhostname",
        "/media//etc/hostname",
        "/media/%2fetc%2fhostname",
        "/media/female%5c..%5c..%5cetc%5chostname",
        "/media/male/m1_2.wav",  # a symlink in the input folder that leads out of it
        "/item/%2e%2e/%2e%2e/etc/hostname",
        "/api/panels/%2e%2e/%2e%2e/etc/hostname",
        "/media/speakers.csv",  # inside the folder's parent, not an item
        "/media/female/f1_0.npy",
    ]
    for path in attempts:
        status, _, body = s.get(path)
        assert status in (403, 404), (path, status)
        assert secret not in body and outside[:2000] not in body and b"RIFF" not in body, path
    status, headers, body = s.get("/media/female/f1_0.wav", {"Range": "bytes=0-99"})
    assert status == 206 and len(body) == 100 and headers["content-range"].startswith("bytes 0-99/")
    assert body[:4] == b"RIFF"
    # another name for this machine (DNS rebinding) is refused too
    assert s.get("/map", {"Host": "evil.example:80"})[0] == 421


# -- bad input: one line, and the other pages keep working -----------------------------------------
def test_bad_input_is_one_line_and_the_server_keeps_serving(site):
    s = site["server"]
    vanished = site["input"] / "male" / "m2_0.wav"
    kept = site["root"] / "m2_0.wav"
    shutil.move(vanished, kept)
    try:
        status, _, body = s.get("/media/male/m2_0.wav")
        assert status == 410 and b"has vanished" in body and body.count(b"\n") == 1
        status, _, body = s.get("/item/male/m2_0.wav")
        page = body.decode()
        assert (
            status == 200 and "has vanished" in page and 'class="neighbour"' in page
        )  # its neighbours still
    finally:
        shutil.move(kept, vanished)
    status, _, body = s.get("/map?model=stale")
    assert status == 409 and b"was built from" in body and b"--rebuild" in body
    status, _, body = s.get("/map?model=unindexed")
    assert status == 409 and b"embedkit search index --output_base" in body and b"--model unindexed" in body
    status, _, body = s.get("/item/female/nothing.wav")
    assert status == 404 and b"not an item of this collection" in body
    status, _, body = s.get("/api/map?model=unindexed")
    assert status == 409 and body.count(b"\n") == 1
    for path in ("/map?model=melspec", "/item/female/f1_0.wav", "/compare", "/static/map.js"):
        assert s.get(path)[0] == 200, path


def test_startup_problems_are_one_line(site, tmp_path):
    s = site["server"]
    # a port already in use
    res = subprocess.run(
        [sys.executable, str(ROOT / "run_browse.py"), str(site["out"]), "--port", str(s.port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "is in use" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    # an output folder without any index
    bare = tmp_path / "bare"
    shutil.copytree(
        site["out"] / "melspec_mean", bare / "melspec_mean", ignore=shutil.ignore_patterns(".search")
    )
    res = subprocess.run(
        [sys.executable, str(ROOT / "run_browse.py"), str(bare)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert f"embedkit search index --output_base {bare} --model melspec_mean" in res.stderr
    # listening beyond this machine: said loudly
    wide = Server(
        site["out"], "--host", "0.0.0.0", "--audio_dir", str(site["input"]), log=tmp_path / "wide.log"
    )
    try:
        text = (tmp_path / "wide.log").read_text()
        assert "WARNING: listening on 0.0.0.0" in text and "no login" in text.lower()
        assert wide.get("/map", {"Host": "example.org"})[0] == 200  # --host: any name may reach it
    finally:
        assert wide.stop() == 0
    # a labels CSV with a path outside the input folder: said once, and the server serves without it
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nfemale/f1_0.wav,female\n../../etc/hostname,male\n")
    other = Server(
        site["out"], "--audio_dir", str(site["input"]), "--labels", str(bad), log=tmp_path / "bad.log"
    )
    try:
        warnings = [
            ln for ln in (tmp_path / "bad.log").read_text().splitlines() if "outside the input folder" in ln
        ]
        assert len(warnings) == 1 and "line 3" in warnings[0]
        status, _, body = other.get("/map")
        assert status == 200 and b"labels not used" in body
        assert other.get("/item/female/f1_0.wav")[0] == 200
    finally:
        assert other.stop() == 0


def test_plain_install_needs_no_web_framework(monkeypatch, capsys):
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "import _checkout, embedkit, embedkit.browse.data, embedkit.evaluate, "
            "embedkit.run_extraction, sys; print('flask' in sys.modules, 'werkzeug' in sys.modules)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.stdout.split() == ["False", "False"], res.stderr
    from embedkit import run_browse

    monkeypatch.setitem(sys.modules, "flask", None)  # as if Flask were not installed
    assert run_browse.main(["somewhere"]) == 2
    assert "pip install -r requirements-ui.txt" in capsys.readouterr().err


# -- the bundled example: pitch, beats, frames -----------------------------------------------------
@pytest.mark.slow
def test_bundled_example_item_pages_draw_pitch_and_beats(tmp_path, browser):
    need_ui()
    out = tmp_path / "ex"
    res = run_cli("--config", str(ROOT / "configs" / "example_study.yaml"), "--output_base", str(out))
    assert res.returncode == 0, res.stderr
    assert run_search.main(["index", "--output_base", str(out), "--model", "melspec", "--quiet"]) == 0
    server = Server(out, log=tmp_path / "ex.log")
    try:
        status, _, body = server.get("/api/panels/sweep_110_880.wav")
        panels = {p["model"]: p for p in json.loads(body)["panels"]}
        assert status == 200 and set(panels) == {"crepe", "madmom", "melspec", "melspec_mean"}
        pitch = panels["crepe"]
        f0, conf, t = map(np.array, (pitch["f0"], pitch["conf"], pitch["t"]))
        sure = conf > 0.5
        # the sweep runs 110 -> 880 Hz: early frames near 110, late ones near 880 (examples/make_examples.py)
        assert (
            90 < np.median(f0[sure & (t < 0.5)]) < 140
            and 700 < np.median(f0[sure & (t > t.max() - 0.5)]) < 1000
        )
        panels = {p["model"]: p for p in json.loads(server.get("/api/panels/beat_120bpm.flac")[2])["panels"]}
        beats = np.array(panels["madmom"]["beats"])
        assert abs(np.median(np.diff(beats)) - 0.5) < 0.03  # 120 bpm
        browser.get(server.url + "item/beat_120bpm.flac")
        kinds = wait_for(
            browser,
            "const b = document.getElementById('panels'); return b.dataset.panels && "
            "[...b.querySelectorAll('.panel')].map(p => p.dataset.kind)",
        )
        assert sorted(kinds) == ["beats", "heatmap", "pitch", "vector"]
        assert len(browser.find_elements("css selector", "li.neighbour")) == 2  # the other two files
        browser.get(server.url + "map")
        assert wait_for(browser, "return +document.getElementById('map').dataset.drawn") == 3
    finally:
        assert server.stop() == 0
