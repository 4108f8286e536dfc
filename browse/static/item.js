"use strict";
// An item page: draw what each model wrote for the file on the player's time axis, with a cursor.
(function () {
  const box = document.getElementById("panels");
  const player = document.getElementById("player");
  const timed = player && (player.tagName === "AUDIO" || player.tagName === "VIDEO");
  const drawn = [];  // {canvas, t0, t1, paint}
  let duration = null;

  // viridis, 256 entries, from 9 anchors (enough for a heat map)
  const anchors = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                   [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const f = i / 255 * (anchors.length - 1), a = Math.floor(f), b = Math.min(a + 1, anchors.length - 1), u = f - a;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = anchors[a][c] * (1 - u) + anchors[b][c] * u;
  }

  function span(p) {
    if (p.kind === "heatmap") return [p.t0, p.t1];
    if (p.t && p.t.length) return [p.t[0], p.t[p.t.length - 1]];
    return null;
  }
  function axisEnd(ranges) {
    let end = duration || 0;
    ranges.forEach(r => { if (r && r[1] > end) end = r[1]; });
    return end || 1;
  }

  function panel(p, end) {
    const div = document.createElement("div");
    div.className = "panel " + p.kind;
    div.dataset.model = p.model;
    div.dataset.kind = p.kind;
    const title = document.createElement("div");
    title.className = "title";
    const what = { pitch: "f0 (Hz, log scale; darker = more confident, faint below 0.5)", beats: "beat activation and beats",
                   heatmap: `frames over time (${p.dims} dims${p.rows < p.dims ? ", block means" : ""})`,
                   vector: "pooled vector", curve: "curve", curves: (p.columns || []).join(", "),
                   error: p.message }[p.kind] || p.kind;
    title.textContent = `${p.model} (${p.extractor || ""}) · ${what}${p.note ? " · " + p.note : ""}`;
    div.appendChild(title);
    if (p.kind === "error") { div.classList.add("problem"); box.appendChild(div); return; }
    const canvas = document.createElement("canvas");
    div.appendChild(canvas);
    box.appendChild(div);
    const entry = { canvas, p, end };
    entry.paint = () => paint(entry);
    drawn.push(entry);
    if (timed && p.kind !== "vector") {
      canvas.addEventListener("click", ev => {
        const r = canvas.getBoundingClientRect();
        player.currentTime = (ev.clientX - r.left) / r.width * entry.end;
        if (player.paused) player.play().catch(() => {});
      });
    }
  }

  function paint(e) {
    const { ctx, w, h } = EK.canvas2d(e.canvas);
    const p = e.p, end = e.end;
    const X = t => t / end * w;
    ctx.clearRect(0, 0, w, h);
    if (p.kind === "heatmap") {
      const data = EK.b64(p.data, Uint8Array);
      const img = new ImageData(p.cols, p.rows);
      for (let i = 0; i < p.cols * p.rows; i++) {
        const v = data[i] * 3;
        img.data[i * 4] = lut[v]; img.data[i * 4 + 1] = lut[v + 1]; img.data[i * 4 + 2] = lut[v + 2]; img.data[i * 4 + 3] = 255;
      }
      const off = document.createElement("canvas");
      off.width = p.cols; off.height = p.rows;
      off.getContext("2d").putImageData(img, 0, 0);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(off, X(p.t0), 0, Math.max(1, X(p.t1) - X(p.t0)), h);
    } else if (p.kind === "pitch") {
      const lo = Math.log(30), hi = Math.log(2000);
      for (let i = 0; i < p.t.length; i++) {
        const f = p.f0[i];
        if (!(f > 0)) continue;
        const c = Math.max(0, Math.min(1, p.conf[i]));
        ctx.fillStyle = `rgba(42,111,219,${c < 0.5 ? 0.08 : c})`;  // unvoiced: faint
        ctx.fillRect(X(p.t[i]) - 1, h - (Math.log(f) - lo) / (hi - lo) * h - 1, 2, 2);
      }
      ctx.fillStyle = "#5d6677"; ctx.font = "10px sans-serif";
      [100, 200, 400, 800].forEach(f => ctx.fillText(f + " Hz", 2, h - (Math.log(f) - lo) / (hi - lo) * h + 3));
    } else if (p.kind === "beats" || p.kind === "curve" || p.kind === "curves") {
      const ys = p.kind === "curves" ? p.y : [p.y];
      ys.forEach((y, k) => {
        let y0 = Infinity, y1 = -Infinity;
        y.forEach(v => { if (v < y0) y0 = v; if (v > y1) y1 = v; });
        const Y = v => h - 4 - (v - y0) / Math.max(y1 - y0, 1e-9) * (h - 8);
        ctx.strokeStyle = EK.colour(k + 1); ctx.lineWidth = 1;
        ctx.beginPath();
        const step = p.t.length > 1 ? (p.t[p.t.length - 1] - p.t[0]) / (y.length - 1 || 1) : 0;
        y.forEach((v, i) => { const t = p.t[0] + i * step; if (i) ctx.lineTo(X(t), Y(v)); else ctx.moveTo(X(t), Y(v)); });
        ctx.stroke();
      });
      if (p.beats) {
        ctx.strokeStyle = "#e15759"; ctx.lineWidth = 1.5;
        p.beats.forEach(b => { ctx.beginPath(); ctx.moveTo(X(b), 0); ctx.lineTo(X(b), h); ctx.stroke(); });
      }
    } else if (p.kind === "vector") {
      const v = p.values;
      let a = 0; v.forEach(x => { a = Math.max(a, Math.abs(x)); });
      const bw = w / v.length;
      v.forEach((x, i) => {
        const bh = x / (a || 1) * (h / 2 - 2);
        ctx.fillStyle = x >= 0 ? "#4e79a7" : "#e15759";
        ctx.fillRect(i * bw, h / 2 - Math.max(bh, 0), Math.max(bw - 0.5, 0.5), Math.abs(bh));
      });
    }
    if (timed && p.kind !== "vector" && !isNaN(player.currentTime)) {
      ctx.strokeStyle = "rgba(29,35,48,.85)"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(X(player.currentTime), 0); ctx.lineTo(X(player.currentTime), h); ctx.stroke();
    }
  }

  function paintAll() { drawn.forEach(e => e.paint()); }

  if (box) {
    fetch(box.dataset.api).then(async r => {
      if (!r.ok) throw new Error((await r.text()).trim() || r.statusText);
      return r.json();
    }).then(d => {
      const end = axisEnd(d.panels.map(span));
      d.panels.forEach(p => panel(p, end));
      box.dataset.panels = String(d.panels.length);
      paintAll();
    }).catch(e => {
      const p = document.createElement("p"); p.className = "problem"; p.textContent = e.message; box.appendChild(p);
    });
  }
  if (timed) {
    player.addEventListener("loadedmetadata", () => {
      duration = player.duration;
      drawn.forEach(e => { e.end = Math.max(e.end, isFinite(duration) ? duration : 0); });
      paintAll();
    });
    let raf = null;
    const tick = () => { paintAll(); raf = player.paused ? null : requestAnimationFrame(tick); };
    player.addEventListener("play", () => { if (!raf) raf = requestAnimationFrame(tick); });
    player.addEventListener("seeked", paintAll);
    player.addEventListener("timeupdate", () => { if (!raf) paintAll(); });
  }
  window.addEventListener("resize", paintAll);
  const moment = document.getElementById("moment-link");
  if (moment && timed) {
    moment.addEventListener("click", ev => {
      ev.preventDefault();
      const u = new URL(window.location.href);
      u.searchParams.set("t", player.currentTime.toFixed(3));
      window.location.href = u.toString();
    });
  }
})();
