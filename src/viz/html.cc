// The attention page: one self-contained HTML file (inline CSS and
// JavaScript, the weights embedded as JSON, nothing fetched) with a head view
// in the manner of bertviz -- queries on the left, keys on the right, a line
// per pair whose opacity is the weight, one colour per head -- and a heatmap
// of one head.
//
// Token text reaches the page only as JSON inside a
// <script type="application/json"> element with '<' written \u003c, and the
// script puts it into the document with textContent, so no token can close
// the element or become markup.
#include <algorithm>
#include <string>
#include <string_view>

#include "qkv/visualize.h"
#include "viz/weights.h"

namespace qkv::viz {
namespace {

constexpr std::string_view kHead = R"html(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="qkv">
<title>)html";

constexpr std::string_view kStyle = R"html(</title>
<style>
  body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
         margin: 16px 24px; color: #222; background: #fff; }
  h1 { font-size: 20px; margin: 0 0 2px; }
  .meta { color: #666; margin: 0 0 10px; }
  .controls { display: flex; flex-wrap: wrap; align-items: center; gap: 6px 14px;
              margin-bottom: 14px; }
  .controls select { font: inherit; }
  .head { display: inline-flex; align-items: center; gap: 3px; cursor: pointer; user-select: none;
          padding: 1px 6px 1px 2px; border-radius: 4px; border: 2px solid transparent; }
  .head input { margin: 0; }
  .controls button { font: inherit; padding: 1px 8px; }
  main { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 32px; }
  #headview { display: flex; align-items: flex-start; }
  .col { display: flex; flex-direction: column; }
  #left { align-items: flex-end; }
  #right { align-items: flex-start; }
  .tok { height: 20px; line-height: 20px; padding: 0 6px; white-space: pre; overflow: hidden;
         text-overflow: ellipsis; max-width: 14em; cursor: default; border-radius: 3px;
         font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
         font-size: 13px; }
  #left .tok { text-align: right; }
  .tok.focus { outline: 1px solid #333; }
  .tok.dim { color: #aaa; }
  #matrix { display: flex; flex-direction: column; gap: 6px; }
  #heat { image-rendering: pixelated; border: 1px solid #aaa; cursor: crosshair; }
  #cellinfo { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px;
              min-height: 1.4em; white-space: pre; }
  .scale { display: flex; align-items: center; gap: 6px; font-size: 12px; color: #555; }
  .scale span.bar { width: 120px; height: 10px; border: 1px solid #aaa;
                    background: linear-gradient(to right, #ffffff, #6baed6, #08306b); }
  #error { color: #b00; white-space: pre-wrap; font-family: monospace; }
</style>
</head>
<body data-render="pending">
<h1 id="title"></h1>
<p class="meta" id="meta"></p>
<div class="controls">
  <label>Layer <select id="layer"></select></label>
  <span>Heads</span><span id="heads"></span>
  <button type="button" id="all">all</button><button type="button" id="none">none</button>
</div>
<main>
  <section id="headview" aria-label="head view">
    <div class="col" id="left"></div>
    <canvas id="lines" width="320" height="20"></canvas>
    <div class="col" id="right"></div>
  </section>
  <section id="matrix" aria-label="heatmap">
    <label>Heatmap of head <select id="heathead"></select></label>
    <canvas id="heat" width="10" height="10"></canvas>
    <div class="meta">rows: queries, columns: keys</div>
    <div class="scale">0 <span class="bar"></span> 1</div>
    <div id="cellinfo"></div>
  </section>
</main>
<p class="meta">Hover a token on the left to see what it attends to, on the right to see what
attends to it.</p>
<div id="error" hidden></div>
<script type="application/json" id="qkv-data">)html";

constexpr std::string_view kScript = R"html(</script>
<script>
"use strict";
window.addEventListener("error", function (e) {
  document.body.setAttribute("data-render", "error");
  const box = document.getElementById("error");
  box.hidden = false;
  box.textContent += "error: " + e.message + "\n";
});
(function () {
  const data = JSON.parse(document.getElementById("qkv-data").textContent);
  const T = data.tokens.length, L = data.attention.length, H = data.heads;
  const ROW = 20, LINES_W = 320;
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  // Head h's colour, with opacity a (default 1).
  function headColour(h, a = 1) {
    if (h >= PALETTE.length) return "hsla(" + (h * 137.5) % 360 + ", 65%, 45%, " + a + ")";
    const n = parseInt(PALETTE[h].slice(1), 16);
    return "rgba(" + (n >> 16) + ", " + ((n >> 8) & 255) + ", " + (n & 255) + ", " + a + ")";
  }
  const $ = id => document.getElementById(id);
  let layer = 0, focus = null, heatHead = 0;
  const shown = new Array(H).fill(true);

  // Whitespace and control characters made visible; the text itself is
  // only ever assigned to textContent.
  function display(token) {
    let s = "";
    for (const ch of token) {
      if (ch === " ") s += "\u2423";
      else if (ch === "\n") s += "\\n";
      else if (ch === "\t") s += "\\t";
      else if (ch === "\r") s += "\\r";
      else if (ch < " " || ch === "\x7f") s += "\ufffd";
      else s += ch;
    }
    return s === "" ? "\u2205" : s;
  }
  const w = (l, h, q, k) => data.attention[l][h][q * T + k];

  $("title").textContent = data.title || "Attention";
  document.title = data.title || "Attention";
  const count = (n, what) => n + " " + what + (n === 1 ? "" : "s");
  $("meta").textContent = count(L, "layer") + ", " + count(H, "head") + ", " + count(T, "token");

  for (let l = 0; l < L; ++l) $("layer").add(new Option("" + l, "" + l));
  for (let h = 0; h < H; ++h) {
    $("heathead").add(new Option("" + h, "" + h));
    const label = document.createElement("label");
    label.className = "head";
    label.style.borderColor = headColour(h);
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.dataset.head = "" + h;
    box.addEventListener("change", () => { shown[h] = box.checked; draw(); });
    const swatch = document.createElement("span");
    swatch.textContent = "" + h;
    swatch.style.color = headColour(h);
    swatch.style.fontWeight = "bold";
    label.append(box, swatch);
    $("heads").append(label);
  }
  const setAll = on => {
    for (const box of $("heads").querySelectorAll("input")) {
      box.checked = on;
      shown[+box.dataset.head] = on;
    }
    draw();
  };
  $("all").addEventListener("click", () => setAll(true));
  $("none").addEventListener("click", () => setAll(false));
  $("layer").addEventListener("change", e => { layer = +e.target.value; draw(); });
  $("heathead").addEventListener("change", e => { heatHead = +e.target.value; draw(); });

  const left = [], right = [];
  for (const [col, list, side] of [[$("left"), left, "left"], [$("right"), right, "right"]]) {
    data.tokens.forEach((token, i) => {
      const div = document.createElement("div");
      div.className = "tok";
      div.textContent = display(token);
      div.title = "#" + i + " " + JSON.stringify(token);
      div.addEventListener("mouseenter", () => { focus = {side: side, index: i}; draw(); });
      div.addEventListener("mouseleave", () => { focus = null; draw(); });
      col.append(div);
      list.push(div);
    });
  }

  const lines = $("lines");
  lines.width = LINES_W;
  lines.height = T * ROW;

  function drawLines() {
    const ctx = lines.getContext("2d");
    ctx.clearRect(0, 0, lines.width, lines.height);
    ctx.lineWidth = 2;
    for (let h = 0; h < H; ++h) {
      if (!shown[h]) continue;
      ctx.strokeStyle = headColour(h);
      for (let q = 0; q < T; ++q) {
        if (focus && focus.side === "left" && focus.index !== q) continue;
        for (let k = 0; k < T; ++k) {
          if (focus && focus.side === "right" && focus.index !== k) continue;
          const a = w(layer, h, q, k);
          if (a < 0.004) continue;
          ctx.globalAlpha = Math.min(1, a);
          ctx.beginPath();
          ctx.moveTo(0, (q + 0.5) * ROW);
          ctx.lineTo(LINES_W, (k + 0.5) * ROW);
          ctx.stroke();
        }
      }
    }
    ctx.globalAlpha = 1;
  }

  // With a token in focus, the other column's tokens are shaded by their
  // weight in the head that gives them the most.
  function drawTokens() {
    for (const list of [left, right]) {
      for (const div of list) {
        div.classList.remove("focus", "dim");
        div.style.background = div.style.color = "";
      }
    }
    if (!focus) return;
    const own = focus.side === "left" ? left : right, other = focus.side === "left" ? right : left;
    own[focus.index].classList.add("focus");
    own.forEach((div, i) => { if (i !== focus.index) div.classList.add("dim"); });
    other.forEach((div, j) => {
      let best = 0, bestHead = -1;
      for (let h = 0; h < H; ++h) {
        if (!shown[h]) continue;
        const a = focus.side === "left" ? w(layer, h, focus.index, j) : w(layer, h, j, focus.index);
        if (a > best) { best = a; bestHead = h; }
      }
      if (bestHead < 0) return;
      div.style.background = headColour(bestHead, Math.min(1, best).toFixed(3));
      if (best > 0.6) div.style.color = "#fff";
    });
  }

  // White (0) through light blue to dark blue (1), as in the PNGs.
  function blues(a) {
    const stops = [[255, 255, 255], [107, 174, 214], [8, 48, 107]];
    const t = Math.max(0, Math.min(1, a)) * 2, i = t >= 1 ? 1 : 0, f = t - i;
    return stops[0].map((_, c) => Math.round(stops[i][c] + (stops[i + 1][c] - stops[i][c]) * f));
  }

  const heat = $("heat");
  const CELL = Math.max(1, Math.min(24, Math.floor(320 / T)));
  heat.width = heat.height = T * CELL;
  function drawHeat() {
    const ctx = heat.getContext("2d");
    const image = ctx.createImageData(T, T);
    for (let q = 0; q < T; ++q) {
      for (let k = 0; k < T; ++k) {
        const [r, g, b] = blues(w(layer, heatHead, q, k)), p = 4 * (q * T + k);
        image.data[p] = r; image.data[p + 1] = g; image.data[p + 2] = b; image.data[p + 3] = 255;
      }
    }
    const small = document.createElement("canvas");
    small.width = small.height = T;
    small.getContext("2d").putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(small, 0, 0, T * CELL, T * CELL);
    if (focus) {
      ctx.strokeStyle = "#d62728";
      ctx.lineWidth = 2;
      if (focus.side === "left") ctx.strokeRect(1, focus.index * CELL + 1, T * CELL - 2, CELL - 2);
      else ctx.strokeRect(focus.index * CELL + 1, 1, CELL - 2, T * CELL - 2);
    }
  }
  heat.addEventListener("mousemove", e => {
    const rect = heat.getBoundingClientRect();
    const k = Math.floor((e.clientX - rect.left) / rect.width * T);
    const q = Math.floor((e.clientY - rect.top) / rect.height * T);
    if (q < 0 || q >= T || k < 0 || k >= T) return;
    $("cellinfo").textContent = "query " + q + " " + display(data.tokens[q]) + "  \u2192  key " +
        k + " " + display(data.tokens[k]) + ": " + w(layer, heatHead, q, k).toFixed(4);
  });
  heat.addEventListener("mouseleave", () => { $("cellinfo").textContent = ""; });

  function draw() {
    drawLines();
    drawTokens();
    drawHeat();
  }
  draw();
  if (document.body.getAttribute("data-render") === "pending") {
    document.body.setAttribute("data-render", "ok");
  }
})();
</script>
</body>
</html>
)html";

// Text for the <title> element (the script sets the visible heading).
std::string html_escape(std::string_view s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// {"title": ..., "tokens": [...], "heads": H, "attention": [layer][head][q * T + k]}
std::string page_data(const AttentionView& view, const Weights& weights) {
  const int64_t t = weights.tokens();
  std::string out = "{\"title\": " + json_string(view.title) + ",\n\"tokens\": [";
  for (size_t i = 0; i < view.tokens.size(); ++i) {
    if (i > 0) out += ", ";
    out += json_string(view.tokens[i]);
  }
  out += "],\n\"heads\": " + std::to_string(weights.heads()) + ",\n\"attention\": [";
  for (int64_t l = 0; l < weights.layers(); ++l) {
    out += l > 0 ? ",\n [" : "\n [";
    for (int64_t h = 0; h < weights.heads(); ++h) {
      out += h > 0 ? ",\n  [" : "\n  [";
      const float* w = weights.head(l, h);
      for (int64_t i = 0; i < t * t; ++i) {
        if (i > 0) out += ',';
        append_rounded(out, std::clamp(w[i], 0.0f, 1.0f));
      }
      out += ']';
    }
    out += ']';
  }
  out += "\n]}";
  return out;
}

}  // namespace

void write_html(const std::string& path, const AttentionView& view) {
  const Weights weights(view);
  std::string page;
  page.append(kHead);
  page += html_escape(view.title.empty() ? "Attention" : view.title);
  page.append(kStyle);
  page += page_data(view, weights);
  page.append(kScript);
  write_text_file(path, page);
}

}  // namespace qkv::viz
