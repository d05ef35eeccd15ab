"""Weights between qkv and PyTorch through safetensors (qkv.save_model /
load_model, save_state_dict / load_state_dict_file against
safetensors.torch), and GloVe / word2vec text vectors against a plain Python
parser (float(s) rounded to float32), with the errors of malformed files."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import qkv


def _torch_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same(qkv_state, torch_state):
    assert sorted(qkv_state) == sorted(torch_state)
    for name, value in torch_state.items():
        got = torch.from_dlpack(qkv_state[name])
        assert got.shape == value.shape, name
        assert torch.equal(got, value), name


def _torch_mha():
    torch.manual_seed(0)
    m = torch.nn.MultiheadAttention(16, 4)
    with torch.no_grad():  # torch zero-initialises the biases: make them tell apart
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    return m


def test_multihead_attention_weights_move_both_ways(tmp_path):
    reference = _torch_mha()
    path = tmp_path / "torch.safetensors"
    save_file(_torch_state(reference), str(path))

    module = qkv.MultiheadAttention(16, 4, seed=3)
    qkv.load_model(str(path), module)
    _assert_same(module.state_dict(), _torch_state(reference))

    back = tmp_path / "qkv.safetensors"
    qkv.save_model(str(back), module)
    restored = torch.nn.MultiheadAttention(16, 4)
    restored.load_state_dict(load_file(str(back)), strict=True)
    _assert_same(module.state_dict(), _torch_state(restored))
    assert torch.equal(load_file(str(back))["in_proj_weight"], reference.in_proj_weight.detach())


@pytest.mark.skipif(not hasattr(qkv, "nn"), reason="qkv.nn is not built")
def test_transformer_encoder_layer_weights_and_outputs_match_torch(tmp_path):
    torch.manual_seed(1)
    reference = torch.nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0,
                                                 batch_first=True).eval()
    path = tmp_path / "layer.safetensors"
    save_file(_torch_state(reference), str(path))
    layer = qkv.nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0,
                                           batch_first=True, seed=9)
    layer.eval()
    qkv.load_model(str(path), layer)
    _assert_same(layer.state_dict(), _torch_state(reference))

    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        expected = reference(x)
    got = layer(qkv.autograd.Variable(qkv.from_numpy(x.numpy()))).value
    torch.testing.assert_close(torch.from_dlpack(got), expected, rtol=1e-5, atol=1e-5)

    back = tmp_path / "back.safetensors"
    qkv.save_model(str(back), layer)
    fresh = torch.nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0,
                                             batch_first=True)
    fresh.load_state_dict(load_file(str(back)), strict=True)
    _assert_same(layer.state_dict(), _torch_state(fresh))


def test_another_architecture_fails_with_the_lists_of_names(tmp_path):
    path = tmp_path / "linear.safetensors"
    save_file({"weight": torch.zeros(3, 16), "in_proj_bias": torch.zeros(7)}, str(path))
    module = qkv.MultiheadAttention(16, 4)
    before = {k: torch.from_dlpack(v).clone() for k, v in module.state_dict().items()}
    with pytest.raises(qkv.QkvError) as error:
        qkv.load_model(str(path), module)
    message = str(error.value)
    assert str(path) in message
    assert "in_proj_weight" in message and "out_proj.weight" in message  # missing
    assert "weight" in message  # unexpected
    assert "in_proj_bias" in message  # mismatched
    _assert_same(module.state_dict(), before)  # untouched


def test_state_dict_files_round_trip_with_torch(tmp_path):
    state = {
        "a.weight": torch.randn(3, 4),
        "b.table": torch.randn(5, 2).to(torch.bfloat16),
        "steps": torch.arange(6, dtype=torch.int64),
    }
    path = tmp_path / "s.safetensors"
    qkv.save_state_dict(str(path), {k: qkv.from_numpy(v) for k, v in state.items()})
    loaded = load_file(str(path))
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    save_file(state, str(tmp_path / "t.safetensors"))
    back = qkv.load_state_dict_file(str(tmp_path / "t.safetensors"))
    for k, v in state.items():
        assert torch.equal(torch.from_dlpack(back[k]), v), k
    with pytest.raises(qkv.QkvError, match="missing.safetensors"):
        qkv.load_state_dict_file(str(tmp_path / "missing.safetensors"))


# ---- text vectors ---------------------------------------------------------------------


def reference_text_vectors(text: str, max_words: int = 0):
    """A plain transcription of the formats: (words, float32 array, duplicates)."""
    lines = [line for line in text.lstrip("\ufeff").split("\n")]
    rows = [line.rstrip("\r").split() for line in lines]
    rows = [r for r in rows if r]
    if len(rows[0]) == 2 and all(t.isdigit() for t in rows[0]):
        count, dim = int(rows[0][0]), int(rows[0][1])
        rows = rows[1:]
        assert len(rows) == count or max_words
    words, vectors, seen, duplicates = [], [], set(), 0
    for r in rows:
        values = [np.float32(float(t)) for t in r[1:]]
        if r[0] in seen:
            duplicates += 1
            continue
        seen.add(r[0])
        words.append(r[0])
        vectors.append(values)
        if max_words and len(words) == max_words:
            break
    return words, np.array(vectors, dtype=np.float32), duplicates


def _random_number(rng: random.Random) -> str:
    kind = rng.randrange(6)
    x = rng.gauss(0, 1) * 10 ** rng.randrange(-8, 8)
    if kind == 0:
        return str(rng.randrange(-1000, 1000))
    if kind == 1:
        return f"{x:.{rng.randrange(1, 20)}e}"
    if kind == 2:
        return f"{x:.{rng.randrange(0, 12)}f}"
    if kind == 3:
        return repr(x)
    if kind == 4:
        return rng.choice(["-0", "0.", ".5", "-.25", "+1.5", "1E-3", "3.4028234e38", "1e-45"])
    return f"{x:.9g}"


@pytest.mark.parametrize("word2vec", [False, True])
def test_text_vectors_match_the_python_reference(tmp_path, word2vec):
    rng = random.Random(7 + word2vec)
    dim = 7
    vocab = ["the", ",", "Straße", "日本", "naïve", "a-b", "x" * 50] + [f"w{i}" for i in range(60)]
    lines = []
    for _ in range(120):
        word = rng.choice(vocab)
        sep = rng.choice([" ", "\t", "  "])
        lines.append(word + sep + sep.join(_random_number(rng) for _ in range(dim)))
    text = (f"{len(lines)} {dim}\n" if word2vec else "") + "\n".join(lines) + "\n"
    path = tmp_path / "vectors.txt"
    path.write_text(text, encoding="utf-8")

    v = qkv.load_text_vectors(str(path))
    words, vectors, duplicates = reference_text_vectors(text)
    assert v.format == ("word2vec" if word2vec else "glove")
    assert v.words == words
    assert v.duplicates == duplicates > 0
    assert v.dim == dim and len(v) == len(words)
    np.testing.assert_array_equal(np.asarray(v.vectors).view(np.uint32), vectors.view(np.uint32))

    few = qkv.load_text_vectors(str(path), max_words=5)
    assert few.words == words[:5]
    np.testing.assert_array_equal(np.asarray(few.vectors), vectors[:5])


@pytest.mark.parametrize(
    "content, options, parts",
    [
        ("", {}, ["is empty"]),
        ("a 1 2\nb 1 2 3\n", {}, ["line 2", "ragged rows"]),
        ("a 1 two\n", {}, ["line 1", "not a number: 'two'"]),
        ("a 1 2\nb nan 2\n", {}, ["line 2", "not finite"]),
        ("a 1 -inf\n", {}, ["line 1", "not finite"]),
        ("7\na 1\n", {}, ["line 1", "'count dim'"]),
        ("3 2\na 1 2\n", {}, ["promises 3 words but the file has 1 rows"]),
        ("a 1 2\n", {"expected_dim": 4}, ["expected_dim is 4"]),
        ("w" * 200 + " 1\n", {"max_line_bytes": 100}, ["line 1", "max_line_bytes (100)"]),
        (b"\xff 1 2\n", {}, ["line 1", "UTF-8"]),
        ("a 1\n", {"format": "word2vec"}, ["line 1", "header"]),
    ],
)
def test_malformed_text_vectors_raise_with_file_and_line(tmp_path, content, options, parts):
    path = tmp_path / "bad.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(qkv.QkvError) as error:
        qkv.load_text_vectors(str(path), **options)
    message = str(error.value)
    assert str(path) in message
    for part in parts:
        assert part in message, message


def test_bad_options_raise(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("a 1\n")
    with pytest.raises(qkv.QkvError, match="format must be"):
        qkv.load_text_vectors(str(path), format="fasttext")
    v = qkv.load_text_vectors(str(path))
    with pytest.raises(qkv.QkvError, match="init must be"):
        qkv.embedding_table_for(["a"], v, init="xavier")


def test_embedding_table_for_vocabulary(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("cat 1 2 3\ndog 4 5 6\n")
    v = qkv.load_text_vectors(str(path))
    table = np.asarray(qkv.embedding_table_for(["dog", "<pad>", "cat", "emu"], v, seed=4))
    assert table.shape == (4, 3) and table.dtype == np.float32
    np.testing.assert_array_equal(table[0], [4, 5, 6])
    np.testing.assert_array_equal(table[2], [1, 2, 3])
    assert not np.array_equal(table[1], table[3])  # drawn, one row after another
    assert all(math.isfinite(x) for x in table.ravel())
    again = np.asarray(qkv.embedding_table_for(["dog", "<pad>", "cat", "emu"], v, seed=4))
    np.testing.assert_array_equal(table, again)
    zeros = np.asarray(qkv.embedding_table_for(["emu"], v, init="zeros"))
    np.testing.assert_array_equal(zeros, np.zeros((1, 3), np.float32))
    # The table is an nn.Embedding's weight, as torch.nn.Embedding.from_pretrained takes it.
    emb = torch.nn.Embedding.from_pretrained(torch.from_dlpack(qkv.tensor(table)))
    assert torch.equal(emb(torch.tensor([2]))[0], torch.tensor([1.0, 2.0, 3.0]))


def test_corrupted_text_vectors_raise_qkv_errors_only(tmp_path):
    rng = random.Random(3)
    valid = "3 2\nalpha 0.5 -1\nStraße 2e3 .5\n日本 1 2\n".encode()
    alphabet = b" \t\n\r.-+eE019nafi\x00\xc3\xa9\xff\xe6"
    path = tmp_path / "fuzz.txt"
    outcomes = set()
    for _ in range(300):
        data = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(data)) if data else 0
            op = rng.randrange(3)
            if op == 0 and data:
                data[at] = rng.choice(alphabet)
            elif op == 1:
                data.insert(at, rng.choice(alphabet))
            else:
                del data[at:at + rng.randrange(1, 4)]
        path.write_bytes(bytes(data))
        try:
            v = qkv.load_text_vectors(str(path))
            assert np.isfinite(np.asarray(v.vectors)).all()
            outcomes.add("ok")
        except qkv.QkvError as error:
            assert str(path) in str(error)
            outcomes.add("error")
    assert outcomes == {"ok", "error"}
