"""qkv.viz: attention heatmaps (PNG), the offline head-view page and bertviz's JSON.

The page is opened in headless Chromium (Debian's `chromium`, which
scripts/setup.sh installs): the screenshot must show the head view, the page's
script must finish without an error or console message, and hovering a token,
changing the layer and unticking the heads must redraw what they should. The
JSON goes through bertviz's own head_view when bertviz is installed.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import qkv

TEXT = "To be, or not to be: that is the question."
HOSTILE = "</script><b>bold</b>"


def line_tokens():
    """A character-level tokenisation of TEXT with two unusual tokens in it."""
    tokens = list(TEXT)
    tokens[3] = HOSTILE
    tokens[6] = "\u00e9\n"
    return tokens


def patterns(t: int, layer: int) -> np.ndarray:
    """[4, t, t] causal attention a small trained model might show: the previous
    token, the first token, a uniform spread, a local window (order by layer)."""
    q = np.arange(t)[:, None]
    k = np.arange(t)[None, :]
    causal = k <= q
    previous = (k == np.maximum(q - 1, 0)).astype(np.float64)
    first = np.where(causal, np.where(k == 0, 6.0, 1.0), 0.0)
    uniform = causal.astype(np.float64)
    window = np.where(causal & (q - k < 3), 2.0 ** -(q - k).clip(0), 0.0)
    heads = [previous, first, uniform, window]
    heads = heads[layer % 4:] + heads[:layer % 4]
    out = np.stack(heads)
    return out / out.sum(-1, keepdims=True)


def model_like_view(layers: int = 2):
    tokens = line_tokens()
    return tokens, [patterns(len(tokens), l).astype(np.float32) for l in range(layers)]


# ---- PNG reading (no Pillow in the test environment) ----

def read_png(path) -> np.ndarray:
    """An 8-bit RGB / RGBA / grey PNG as a [height, width, channels] uint8 array."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0, f"{path}: bit depth {depth}, interlace {interlace}"
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw = zlib.decompress(idat)
    stride = width * channels
    out = np.zeros((height, stride), dtype=np.int32)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        if kind == 0:
            row = line
        elif kind == 2:
            row = (line + prev) & 255
        else:  # Sub, Average, Paeth depend on the pixel to the left: byte by byte
            row = np.zeros(stride, dtype=np.int32)
            for x in range(stride):
                a = row[x - channels] if x >= channels else 0
                b = prev[x]
                c = prev[x - channels] if x >= channels else 0
                if kind == 1:
                    predictor = a
                elif kind == 3:
                    predictor = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[x] = (line[x] + predictor) & 255
        out[y] = prev = row
    return out.astype(np.uint8).reshape(height, width, channels)


DARK = (8, 48, 107)  # the colour of weight 1


def count_colour(image: np.ndarray, rgb) -> int:
    return int(np.all(image[..., :3] == np.array(rgb, np.uint8), axis=-1).sum())


# ---- PNG ----

def test_head_png_from_numpy_torch_and_qkv(tmp_path):
    tokens, layers = model_like_view()
    t = len(tokens)
    inputs = {
        "numpy": layers,
        "float64": [l.astype(np.float64) for l in layers],
        "torch": [torch.from_numpy(l).requires_grad_() for l in layers],
        "qkv": [qkv.tensor(l) for l in layers],
    }
    images = {}
    for name, maps in inputs.items():
        qkv.viz.write_head_png(tmp_path / f"{name}.png", tokens, maps, 1, 0, cell=8)
        images[name] = read_png(tmp_path / f"{name}.png")
    for name, image in images.items():
        assert np.array_equal(image, images["numpy"]), name
    # Layer 1 head 0 is the first-token pattern: query 0 puts weight 1 on key 0.
    image = images["numpy"]
    assert image.shape[0] >= t * 8 and image.shape[1] >= t * 8
    assert count_colour(image, DARK) >= 8 * 8
    # Labels take room: the same map without them is smaller.
    qkv.viz.write_head_png(str(tmp_path / "bare.png"), tokens, layers, 1, 0, cell=8, labels=False)
    bare = read_png(tmp_path / "bare.png")
    assert bare.shape[0] < image.shape[0] and bare.shape[1] < image.shape[1]


def test_grid_png_has_a_heatmap_per_head(tmp_path):
    tokens = ["a", "b", "c", "d"]
    # Head (l, h): every query on key (l + h) % 4, so 4 dark cells each.
    maps = [np.stack([np.eye(4, dtype=np.float32)[[(l + h) % 4] * 4] for h in range(3)]) for l in range(2)]
    qkv.viz.write_grid_png(tmp_path / "grid.png", tokens, maps, cell=5, title="two layers")
    blank = [np.full_like(m, 0.25) for m in maps]
    qkv.viz.write_grid_png(tmp_path / "blank.png", tokens, blank, cell=5, title="two layers")
    grid, none = read_png(tmp_path / "grid.png"), read_png(tmp_path / "blank.png")
    assert grid.shape == none.shape
    assert count_colour(grid, DARK) - count_colour(none, DARK) == 2 * 3 * 4 * 5 * 5


# ---- bertviz JSON ----

def test_bertviz_json_round_trips(tmp_path):
    tokens, layers = model_like_view(3)
    layers[2][1, 5, :6] = [0.99999994, 1e-7, 0, 0, 0, 0]  # every digit of a float counts
    qkv.viz.write_bertviz_json(tmp_path / "a.json", tokens, layers)
    text = (tmp_path / "a.json").read_text(encoding="utf-8")
    assert text == qkv.viz.bertviz_json(tokens, layers)
    data = json.loads(text)
    assert data["tokens"] == tokens
    attention = np.array(data["attention"], dtype=np.float64)
    assert attention.shape == (3, 1, 4, len(tokens), len(tokens))
    assert np.array_equal(attention.astype(np.float32)[:, 0], np.stack(layers))


def test_bertviz_head_view_accepts_the_json(tmp_path):
    try:
        import bertviz
    except ImportError as e:  # scripts/setup.sh installs it (pip install --no-deps bertviz + ipython)
        pytest.skip(f"bertviz is not importable ({e}); scripts/setup.sh installs it")
    tokens, layers = model_like_view()
    qkv.viz.write_bertviz_json(tmp_path / "a.json", tokens, layers)
    data = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    attention = [torch.tensor(layer) for layer in data["attention"]]
    assert attention[0].shape == (1, 4, len(tokens), len(tokens))
    page = bertviz.head_view(attention, data["tokens"], html_action="return")
    source = page.data
    assert "<script" in source and "Layer:" in source
    # bertviz embeds the attention and tokens as JSON in its script.
    assert json.dumps(HOSTILE)[1:-1].replace("/", "\\/") in source or json.dumps(HOSTILE)[1:-1] in source


# ---- a real model's attention ----

def test_gpt_attention_maps_make_every_file(tmp_path):
    tokenizer = qkv.CharTokenizer.train(TEXT)
    model = qkv.nn.GPT(qkv.nn.GPTConfig(vocab_size=tokenizer.vocab_size, context=64, n_layer=2, n_head=4,
                                        d_model=32, dropout=0.0), seed=3)
    ids = tokenizer.encode(TEXT[:20])
    maps = model.attention_maps(qkv.tensor(np.array([ids], dtype=np.int32)))
    tokens = [tokenizer.decode([i]) for i in ids]
    qkv.viz.write_html(tmp_path / "a.html", tokens, maps, title="tiny GPT")
    qkv.viz.write_grid_png(tmp_path / "grid.png", tokens, maps)
    qkv.viz.write_head_png(tmp_path / "h.png", tokens, maps, 1, 3)
    qkv.viz.write_bertviz_json(tmp_path / "a.json", tokens, maps)
    data = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    attention = np.array(data["attention"])
    assert attention.shape == (2, 1, 4, 20, 20)
    np.testing.assert_allclose(attention.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(attention, 1) == 0), "a GPT's attention is causal"
    assert read_png(tmp_path / "grid.png").shape[2] == 3


# ---- errors ----

def test_errors_name_the_problem_and_write_nothing(tmp_path):
    tokens, layers = model_like_view()
    out = tmp_path / "out.png"
    with pytest.raises(qkv.QkvError, match=r"layer 0 has shape \[4, 42, 42\]; expected \[heads, 41, 41\]"):
        qkv.viz.write_head_png(out, tokens[:-1], layers, 0, 0)
    with pytest.raises(qkv.QkvError, match=r"layer 1 has 3 heads but layer 0 has 4"):
        qkv.viz.write_html(out, tokens, [layers[0], layers[1][:3]])
    with pytest.raises(qkv.QkvError, match=r"no layers"):
        qkv.viz.write_grid_png(out, tokens, [])
    with pytest.raises(qkv.QkvError, match=r"layer 1 \(str\) is not an array"):
        qkv.viz.bertviz_json(tokens, [layers[0], "weights"])
    bad = layers[0].copy()
    bad[2, 3, 1] = np.nan
    with pytest.raises(qkv.QkvError, match=r"layer 0 head 2 query 3 key 1 has weight nan"):
        qkv.viz.write_bertviz_json(out, tokens, [bad])
    with pytest.raises(qkv.QkvError, match=r"head 4 out of range \(the view has 4 heads\)"):
        qkv.viz.write_head_png(out, tokens, layers, 0, 4)
    with pytest.raises(qkv.QkvError, match=r"cannot create"):
        qkv.viz.write_html(tmp_path / "missing" / "a.html", tokens, layers)
    assert list(tmp_path.iterdir()) == []


# ---- the page in headless Chromium ----

def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def run_chromium(binary, tmp_path, page: Path, *args):
    """Runs headless Chromium on `page`; returns (stdout, console lines)."""
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
               "--enable-logging=stderr", "--v=0", *args, page.resolve().as_uri()]
    env = dict(os.environ, HOME=str(tmp_path))
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, f"chromium exited with {done.returncode}:\n{done.stderr[-3000:]}"
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


# Appended to a copy of the page: drives it as a reader would and reports
# what each step drew (a colour-weighted sum of the lines canvas's pixels).
INTERACTION = """
<script>
addEventListener("load", () => {
  const left = document.querySelectorAll("#left .tok"), right = document.querySelectorAll("#right .tok");
  const lines = document.getElementById("lines");
  const ink = () => {  // read from a copy, so the page's canvas is never read back
    const copy = document.createElement("canvas");
    copy.width = lines.width;
    copy.height = lines.height;
    const ctx = copy.getContext("2d", {willReadFrequently: true});
    ctx.drawImage(lines, 0, 0);
    const d = ctx.getImageData(0, 0, copy.width, copy.height).data;
    let n = 0;  // colour-weighted, so changing which head draws a line shows
    for (let i = 0; i < d.length; i += 4) n += d[i] + 3 * d[i + 1] + 7 * d[i + 2] + d[i + 3];
    return n;
  };
  const result = {render: document.body.getAttribute("data-render"), all: ink()};
  left[2].dispatchEvent(new MouseEvent("mouseenter"));
  result.row = ink();
  result.shaded = Array.from(right, d => d.style.background ? "1" : "0").join("");
  left[2].dispatchEvent(new MouseEvent("mouseleave"));
  result.back = ink();
  const layer = document.getElementById("layer");
  layer.value = "1";
  layer.dispatchEvent(new Event("change"));
  result.layer1 = ink();
  document.getElementById("none").click();
  result.none = ink();
  result.tokens = left.length;
  result.heads = document.querySelectorAll("#heads input").length;
  result.layers = layer.options.length;
  result.title = document.getElementById("title").textContent;
  result.hostile = left[3].textContent;
  result.injected = document.querySelectorAll("b").length;
  const out = document.createElement("pre");
  out.id = "test-result";
  out.textContent = JSON.stringify(result);
  document.body.append(out);
});
</script>
"""


def test_html_renders_in_headless_chromium(tmp_path):
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium; scripts/setup.sh does it)")
    tokens, layers = model_like_view()
    page = tmp_path / "attention.html"
    qkv.viz.write_html(page, tokens, layers, title="To be <or> not & \"to\" be")
    source = page.read_text(encoding="utf-8")
    assert source.count("</script>") == 2, "a token closed the data element"

    # What a reader sees first: the head view, drawn, without a console message.
    shot = tmp_path / "shot.png"
    _, console = run_chromium(binary, tmp_path, page, f"--screenshot={shot}", "--window-size=1100,1000")
    assert console == [], "console messages:\n" + "\n".join(console)
    image = read_png(shot)[..., :3].astype(np.int32)
    assert image.shape[:2] == (1000, 1100)
    not_white = (image < 245).any(-1).mean()
    coloured = (image.max(-1) - image.min(-1) > 80).sum()  # head-coloured lines and heatmap
    assert not_white > 0.03, f"the screenshot is nearly blank ({not_white:.1%} not white)"
    assert coloured > 2000, f"only {coloured} coloured pixels: the lines or the heatmap are missing"

    # Interaction: hover, layer change, no heads.
    driven = tmp_path / "driven.html"
    driven.write_text(source.replace("</body>", INTERACTION + "</body>"), encoding="utf-8")
    dom, console = run_chromium(binary, tmp_path, driven, "--dump-dom")
    assert console == [], "console messages:\n" + "\n".join(console)
    found = re.search(r'<pre id="test-result">(.*?)</pre>', dom, re.S)
    assert found, "the page's script did not run to the end:\n" + dom[-2000:]
    result = json.loads(html.unescape(found.group(1)))
    t = len(tokens)
    assert result["render"] == "ok"
    assert (result["tokens"], result["heads"], result["layers"]) == (t, 4, 2)
    assert result["title"] == "To be <or> not & \"to\" be"
    assert result["hostile"] == HOSTILE and result["injected"] == 0
    assert 0 < result["row"] < result["all"], result
    assert result["shaded"] == "111" + "0" * (t - 3), "query 2 attends to keys 0..2 only"
    assert result["back"] == result["all"]
    assert result["layer1"] > 0 and result["layer1"] != result["all"]
    assert result["none"] == 0
