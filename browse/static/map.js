"use strict";
// The collection map: one point per vector of the index, drawn on a canvas; hover names, click opens.
(function () {
  const canvas = document.getElementById("map");
  if (!canvas) return;
  const status = document.getElementById("map-status");
  const tip = document.getElementById("tooltip");
  const legend = document.getElementById("legend");
  const colourBy = document.getElementById("colour-by");
  let M = null;               // the decoded map
  let view = null;            // {cx, cy, scale}: data -> screen
  let grid = null;            // screen-space buckets for hover
  let colouring = null;
  const R = 3;                // point radius, px

  fetch(canvas.dataset.api).then(async r => {
    if (!r.ok) throw new Error((await r.text()).trim() || r.statusText);
    return r.json();
  }).then(d => {
    M = {
      d, n: d.points, names: d.names,
      src: EK.b64(d.src, Uint32Array), x: EK.b64(d.x, Float32Array), y: EK.b64(d.y, Float32Array),
      start: EK.b64(d.start, Float32Array),
    };
    const keys = Object.keys(d.colourings);
    colouring = keys[0];
    if (keys.length > 1) {
      keys.forEach(k => { const o = document.createElement("option"); o.value = k; o.textContent = k; colourBy.appendChild(o); });
      document.getElementById("colour-by-label").hidden = false;
      colourBy.addEventListener("change", () => { colouring = colourBy.value; draw(); });
    }
    document.getElementById("map-axes").textContent =
      d.method.toUpperCase() + ": " + d.axes.join(", ") + ".";
    reset();
    draw();
  }).catch(e => {
    status.textContent = "";
    const p = document.createElement("p");
    p.className = "problem"; p.id = "problem"; p.textContent = e.message;
    canvas.parentNode.replaceWith(p);
  });

  function reset() {
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < M.n; i++) {
      const x = M.x[i], y = M.y[i];
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    const w = canvas.clientWidth, h = canvas.clientHeight;
    const sx = (w - 40) / Math.max(x1 - x0, 1e-9), sy = (h - 40) / Math.max(y1 - y0, 1e-9);
    view = { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, scale: Math.min(sx, sy) };
    if (!isFinite(view.scale) || M.n < 2) view.scale = 1;
  }
  const sx = x => canvas.clientWidth / 2 + (x - view.cx) * view.scale;
  const sy = y => canvas.clientHeight / 2 - (y - view.cy) * view.scale;
  canvas.ekScreen = i => [sx(M.x[i]), sy(M.y[i])];  // where point i is drawn (canvas pixels), for scripts

  function groupsOf() {
    const c = M.d.colourings[colouring];
    return { names: c.names, idx: EK.b64(c.index, Uint16Array) };
  }

  function draw() {
    const { ctx, w, h } = EK.canvas2d(canvas);
    ctx.clearRect(0, 0, w, h);
    const g = groupsOf();
    // order the groups by size: the biggest gets the first colour
    const counts = new Array(g.names.length).fill(0);
    for (let i = 0; i < M.n; i++) counts[g.idx[M.src[i]]]++;
    const rank = counts.map((c, i) => [c, i]).sort((a, b) => b[0] - a[0]).map(p => p[1]);
    const colourOf = new Array(g.names.length);
    rank.forEach((gi, r) => { colourOf[gi] = EK.colour(r); });
    const cell = 8;
    const cols = Math.ceil(w / cell) + 1;
    grid = new Map();
    let drawn = 0;
    const size = M.n > 20000 ? 2 : R;
    ctx.globalAlpha = M.n > 20000 ? 0.6 : 0.85;
    for (let gi of rank) {  // one fill colour at a time: fast for 100k points
      ctx.fillStyle = colourOf[gi];
      ctx.beginPath();
      for (let i = 0; i < M.n; i++) {
        if (g.idx[M.src[i]] !== gi) continue;
        const px = sx(M.x[i]), py = sy(M.y[i]);
        if (px < -R || py < -R || px > w + R || py > h + R) continue;  // panned or zoomed away
        ctx.moveTo(px + size, py);
        ctx.arc(px, py, size, 0, 2 * Math.PI);
        drawn++;
        const key = Math.floor(py / cell) * cols + Math.floor(px / cell);
        const b = grid.get(key); if (b) b.push(i); else grid.set(key, [i]);
      }
      ctx.fill();
    }
    ctx.globalAlpha = 1;
    canvas.dataset.drawn = String(drawn);
    canvas.dataset.total = String(M.d.total);
    const sampled = M.n < M.d.total ? ` (an even sample of the ${M.d.total} vectors in the index)` : "";
    status.textContent = `${drawn} points${sampled} · ${M.names.length} files · ${M.d.level} level`;
    legend.innerHTML = "";
    rank.forEach(gi => {
      const li = document.createElement("li");
      const sw = document.createElement("span"); sw.className = "sw"; sw.style.background = colourOf[gi];
      li.appendChild(sw);
      li.appendChild(document.createTextNode(`${g.names[gi]} (${counts[gi]})`));
      legend.appendChild(li);
    });
  }

  function nearest(px, py) {
    if (!grid) return -1;
    const cell = 8, cols = Math.ceil(canvas.clientWidth / cell) + 1;
    const cx = Math.floor(px / cell), cy = Math.floor(py / cell);
    let best = -1, bd = (R + 4) * (R + 4);
    for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) {
      const b = grid.get((cy + dy) * cols + cx + dx);
      if (!b) continue;
      for (const i of b) {
        const ex = sx(M.x[i]) - px, ey = sy(M.y[i]) - py, dd = ex * ex + ey * ey;
        if (dd <= bd) { bd = dd; best = i; }
      }
    }
    return best;
  }
  function pos(ev) { const r = canvas.getBoundingClientRect(); return [ev.clientX - r.left, ev.clientY - r.top]; }
  function hrefOf(i) {
    let q = M.d.item_query;
    if (M.start && !isNaN(M.start[i])) q += "&t=" + M.start[i].toFixed(3);
    return EK.itemHref(canvas.dataset.itemBase, M.names[M.src[i]], q);
  }

  let drag = null, moved = false;
  canvas.addEventListener("mousemove", ev => {
    if (!M) return;
    const [px, py] = pos(ev);
    if (drag) {
      view.cx = drag.cx - (px - drag.px) / view.scale;
      view.cy = drag.cy + (py - drag.py) / view.scale;
      moved = moved || Math.abs(px - drag.px) + Math.abs(py - drag.py) > 3;
      draw();
      return;
    }
    const i = nearest(px, py);
    if (i < 0) { tip.hidden = true; canvas.style.cursor = "crosshair"; return; }
    const g = groupsOf();
    const t = M.start && !isNaN(M.start[i]) ? " @ " + EK.fmtTime(M.start[i]) : "";
    tip.textContent = M.names[M.src[i]] + t + " · " + g.names[g.idx[M.src[i]]];
    tip.hidden = false;
    tip.style.left = Math.min(px + 12, canvas.clientWidth - tip.offsetWidth - 4) + "px";
    tip.style.top = (py + 12) + "px";
    canvas.style.cursor = "pointer";
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; drag = null; });
  canvas.addEventListener("mousedown", ev => {
    if (!M) return;
    const [px, py] = pos(ev);
    drag = { px, py, cx: view.cx, cy: view.cy }; moved = false;
  });
  canvas.addEventListener("mouseup", ev => {
    const wasDrag = moved; drag = null;
    if (!M || wasDrag) return;
    const [px, py] = pos(ev);
    const i = nearest(px, py);
    if (i >= 0) window.location.href = hrefOf(i);
  });
  canvas.addEventListener("wheel", ev => {
    if (!M) return;
    ev.preventDefault();
    const [px, py] = pos(ev);
    const f = Math.exp(-ev.deltaY * 0.0015);
    const dx = view.cx + (px - canvas.clientWidth / 2) / view.scale;
    const dy = view.cy - (py - canvas.clientHeight / 2) / view.scale;
    view.scale *= f;
    view.cx = dx - (px - canvas.clientWidth / 2) / view.scale;
    view.cy = dy + (py - canvas.clientHeight / 2) / view.scale;
    draw();
  }, { passive: false });
  canvas.addEventListener("dblclick", () => { if (M) { reset(); draw(); } });
  window.addEventListener("resize", () => { if (M) draw(); });
})();
