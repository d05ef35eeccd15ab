"""qkv.autograd.gradcheck from Python: f64 finite differences of ops and of
modules converted with .to("f64"); the C++ suite (tests/cpp/gradcheck_test.cc)
covers every op and module, this checks the front door and a few graphs."""

import pytest

import qkv
from qkv import autograd as ag


def leaf(shape, seed, scale=1.0):
    return ag.Variable(qkv.scale(qkv.randn(shape, seed=seed, dtype="f64"), scale), True)


def assert_passes(fn, leaves, **options):
    result = ag.gradcheck(fn, leaves, atol=1e-7, rtol=1e-6, **options)
    assert result["passed"], result["failures"]
    assert result["checks"] > 0 and result["max_error"] < 1e-7


def test_ops_in_f64():
    x, w, b = leaf([3, 6], 1), leaf([6], 2), leaf([6], 3)
    assert_passes(lambda: ag.softmax(x, 0), [x])
    assert_passes(lambda: ag.layer_norm(x, w, b), [x, w, b])
    weight = leaf([4, 6], 4)
    assert_passes(lambda: ag.gelu(ag.linear(x, weight, None)), [x, weight])
    targets = qkv.tensor([1, 0, 5], dtype="i64")
    assert_passes(lambda: ag.cross_entropy(x, targets, label_smoothing=0.1), [x])


def test_attention_in_f64():
    q, k, v = leaf([1, 2, 5, 3], 5), leaf([1, 2, 6, 3], 6), leaf([1, 2, 6, 3], 7)
    assert_passes(lambda: ag.attention(q, k, v, causal="bottom_right"), [q, k, v])


def test_attention_with_modifiers_in_f64():
    q, k, v = leaf([1, 2, 5, 3], 10), leaf([1, 2, 6, 3], 11), leaf([1, 2, 6, 3], 12)
    for score_mod in [qkv.softcap_score(1.0), qkv.alibi_score(qkv.alibi_slopes(2), 1)]:
        assert_passes(lambda: ag.attention(q, k, v, score_mod=score_mod,
                                           mask_mod=qkv.sliding_window_mask(2, 1)), [q, k, v])


def test_a_module_converted_to_f64():
    layer = qkv.nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.0,
                                           batch_first=True, norm_first=True, seed=3)
    assert layer.to("f64") is layer
    x = leaf([2, 4, 8], 8)
    leaves = [x] + [p for p in layer.parameters() if p.requires_grad]
    assert all(p.value.dtype == "f64" for p in leaves)
    assert_passes(lambda: layer(x), leaves, max_elements=4, directions=2)


def test_a_wrong_gradient_is_reported():
    x = leaf([4], 9)
    # |x| has a kink at 0: shifting a value onto it makes the difference disagree.
    y = ag.Variable(qkv.zeros([4], dtype="f64"), True)
    result = ag.gradcheck(lambda: ag.relu(y), [y])
    assert not result["passed"] and "leaf 0 [4] element 0" in result["failures"]
    with pytest.raises(qkv.QkvError, match="must be f64"):
        ag.gradcheck(lambda: ag.to(x, "f32"), [x])
