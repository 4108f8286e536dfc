"use strict";
// Shared helpers of the browse pages (no dependencies, no external assets).
const EK = {
  b64(s, Type) {
    if (s === null || s === undefined) return null;
    const bin = atob(s);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Type(bytes.buffer);
  },
  // 20 distinct colours (Tableau 20 order: strong first), then grey for the rest
  palette: ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
            "#9c755f", "#bab0ac", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
            "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"],
  colour(i) { return i < this.palette.length ? this.palette[i] : "#b8bcc4"; },
  itemHref(base, path, query) {
    return base + path.split("/").map(encodeURIComponent).join("/") + (query || "");
  },
  fmtTime(t) {
    if (t === null || t === undefined || isNaN(t)) return "";
    const m = Math.floor(t / 60), s = t - 60 * m;
    return m + ":" + (s < 10 ? "0" : "") + s.toFixed(2);
  },
  canvas2d(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    canvas.width = Math.max(1, Math.round(w * dpr));
    canvas.height = Math.max(1, Math.round(h * dpr));
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return { ctx, w, h };
  },
};
// the model selector switches at once (the button stays for pages without scripts)
document.querySelectorAll("header form.model select").forEach(sel =>
  sel.addEventListener("change", () => {
    if (sel.id === "model-select") { const c = document.getElementById("collection-select"); if (c) c.disabled = true; }
    sel.form.submit();
  }));
