"""Tokenizers (qkv.CharTokenizer, qkv.ByteLevelBPE) against the references.

ByteLevelBPE is compared id for id with the `tokenizers` package (a BPE model
with GPT-2's ByteLevel pre-tokeniser and decoder) and with tiktoken, on
tests/data/tokenizer_corpus.txt (Unicode, combining marks, runs of
whitespace, emoji, contractions, numbers). GPT-2's own files need a download,
so the vocabulary compared is one `tokenizers` trains on Tiny Shakespeare and
saves with save_model (GPT-2's file format); tiktoken's gpt2 encoding is
checked too when its file is in tiktoken's cache. A reference that is not
installed skips its tests with the reason.
"""

from __future__ import annotations

import json
import pathlib
import random

import pytest

import qkv

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = (ROOT / "tests" / "data" / "tokenizer_corpus.txt").read_text(encoding="utf-8")
SHAKESPEARE = (ROOT / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
GPT2_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
VOCAB_SIZE = 2000
EOT = "<|endoftext|>"


def _import_or_skip(name: str):
    return pytest.importorskip(
        name, reason=f"the `{name}` package is not installed (pip install {name}); "
        "tokenizer parity with it is not checked")


# Characters the pattern treats differently: ASCII letters and digits, the
# contraction letters, apostrophes, every kind of whitespace (\x1c and U+200B
# are not White_Space), letters and numbers outside ASCII, combining marks,
# emoji with skin-tone modifiers, joiners and variation selectors.
_ALPHABET = [*"aZsStTdDmMlLrRvVeE09_'\"!?.,;-", " ", " ", " ", "\t", "\n", "\r", "\x0b",
             "\x0c", "\x85", "\xa0", "\u1680", "\u2003", "\u2028", "\u202f", "\u3000", "\x1c",
             "\u200b", "\u00e9", "\u0301", "\u0661", "\u00bd", "\u2167", "\u4e2d", "\u02b0",
             "\U0001F600", "\U0001F3FD", "\u200d", "\ufe0f", "\U0001D7D8"]


def _random_texts(count: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(1, 40)))
            for _ in range(count)]


def _texts() -> list[str]:
    lines = CORPUS.splitlines(keepends=True)
    return [CORPUS, *lines, "", " ", "   ", "\n\n\n", "  hello", "hello  ", "a  \n  b",
            *_random_texts()]


# ---- CharTokenizer ----


def test_char_tokenizer_round_trip_and_save(tmp_path):
    tok = qkv.CharTokenizer.train(CORPUS)
    assert tok.vocab_size == len(set(CORPUS))
    assert tok.chars == sorted(set(CORPUS))
    ids = tok.encode(CORPUS)
    assert ids == [tok.chars.index(c) for c in CORPUS]
    assert tok.decode(ids) == CORPUS
    tok.save(str(tmp_path / "char"))
    back = qkv.CharTokenizer.load(str(tmp_path / "char"))
    assert back.encode(CORPUS) == ids


def test_char_tokenizer_errors():
    tok = qkv.CharTokenizer.train("abc")
    with pytest.raises(qkv.QkvError, match=r"'z' \(U\+007A\) at position 3"):
        tok.encode("abcz")
    with pytest.raises(qkv.QkvError, match="id 9 at position 0"):
        tok.decode([9])


# ---- ByteLevelBPE against `tokenizers` ----


@pytest.fixture(scope="module")
def hf_trained(tmp_path_factory):
    """`tokenizers`' BPE trained on Tiny Shakespeare, saved as vocab.json + merges.txt."""
    tk = _import_or_skip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = tk.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=[EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([SHAKESPEARE], trainer=trainer)
    out = tmp_path_factory.mktemp("hf_bpe")
    tokenizer.model.save(str(out))
    # Encoding with the saved files, as a user of GPT-2's files would.
    loaded = tk.Tokenizer(models.BPE.from_file(str(out / "vocab.json"), str(out / "merges.txt")))
    loaded.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    loaded.decoder = decoders.ByteLevel()
    loaded.add_special_tokens([EOT])
    return loaded, out


def test_pretokenize_matches_tokenizers():
    _import_or_skip("tokenizers")
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    for text in _texts():
        theirs = [text[a:b] for _, (a, b) in pre.pre_tokenize_str(text)]
        assert qkv.ByteLevelBPE.pretokenize(text) == theirs, repr(text)


def test_pretokenize_matches_regex():
    regex = _import_or_skip("regex")
    pattern = regex.compile(GPT2_PATTERN)
    for text in _texts():
        assert qkv.ByteLevelBPE.pretokenize(text) == pattern.findall(text), repr(text)


def test_loaded_files_match_tokenizers(hf_trained):
    reference, directory = hf_trained
    bpe = qkv.ByteLevelBPE.from_files(str(directory / "vocab.json"), str(directory / "merges.txt"))
    assert bpe.vocab_size == reference.get_vocab_size()
    for text in _texts():
        ids = bpe.encode(text)
        assert ids == reference.encode(text).ids, repr(text)
        assert bpe.decode(ids) == text
        assert reference.decode(ids, skip_special_tokens=False) == text


def test_training_matches_tokenizers(hf_trained, tmp_path):
    reference, directory = hf_trained
    bpe = qkv.ByteLevelBPE.train(SHAKESPEARE, VOCAB_SIZE, special_tokens=[EOT])
    assert bpe.vocab_size == VOCAB_SIZE
    bpe.save(str(tmp_path))
    ours = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    theirs = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    assert ours == theirs
    our_merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    their_merges = [line for line in
                    (directory / "merges.txt").read_text(encoding="utf-8").splitlines()[1:] if line]
    assert our_merges == their_merges
    for text in _texts():
        assert bpe.encode(text) == reference.encode(text).ids, repr(text)
    again = qkv.ByteLevelBPE.load(str(tmp_path))
    assert again.encode(CORPUS) == bpe.encode(CORPUS)


# ---- ByteLevelBPE against tiktoken ----


def test_matches_tiktoken_with_the_trained_ranks(hf_trained):
    """tiktoken with the trained vocabulary as its mergeable ranks: tiktoken
    merges by the rank of a pair's concatenation, GPT-2 by the rank of the pair;
    they agree when ids follow merge order, as trained vocabularies' do."""
    tiktoken = _import_or_skip("tiktoken")
    _, directory = hf_trained
    bpe = qkv.ByteLevelBPE.from_files(str(directory / "vocab.json"), str(directory / "merges.txt"))
    ranks = {bpe.decode_bytes([i]): i for i in range(bpe.vocab_size) if i != 0}
    encoding = tiktoken.Encoding(name="qkv-test", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={EOT: 0})
    for text in _texts():
        assert bpe.encode(text) == encoding.encode(text, allowed_special="all"), repr(text)


def test_matches_tiktoken_gpt2(tmp_path):
    tiktoken = _import_or_skip("tiktoken")
    try:
        encoding = tiktoken.get_encoding("gpt2")
    except Exception as e:  # no network and no cached file
        pytest.skip(f"tiktoken's gpt2 files are not available offline ({type(e).__name__}); "
                    "compared with tiktoken on a trained vocabulary instead")
    # GPT-2's vocab.json + merges.txt from tiktoken's ranks (ids are ranks;
    # merges in rank order, each split as GPT-2's own BPE splits the token).
    byte_encoder = {}
    n = 0
    for b in range(256):
        if 33 <= b <= 126 or 161 <= b <= 172 or b >= 174:
            byte_encoder[b] = chr(b)
        else:
            byte_encoder[b] = chr(256 + n)
            n += 1
    spell = lambda bs: "".join(byte_encoder[b] for b in bs)  # noqa: E731
    ranks = encoding._mergeable_ranks
    vocab = {spell(token): rank for token, rank in ranks.items()}
    vocab[EOT] = encoding.eot_token
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = min(range(len(parts) - 1),
                       key=lambda i: ranks.get(parts[i] + parts[i + 1], 1 << 30))
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        merges.append(f"{spell(parts[0])} {spell(parts[1])}")
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                         encoding="utf-8")
    bpe = qkv.ByteLevelBPE.load(str(tmp_path))
    for text in _texts():
        assert bpe.encode(text) == encoding.encode(text, allowed_special="all"), repr(text)


# ---- hostile files ----


def test_hostile_files(tmp_path):
    (tmp_path / "vocab.json").write_text("{oops", encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na\n", encoding="utf-8")
    with pytest.raises(qkv.QkvError, match=r"vocab\.json' is not valid JSON"):
        qkv.ByteLevelBPE.load(str(tmp_path))
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 0}), encoding="utf-8")
    with pytest.raises(qkv.QkvError, match="id collision"):
        qkv.ByteLevelBPE.load(str(tmp_path))
    with pytest.raises(qkv.QkvError, match="cannot open"):
        qkv.ByteLevelBPE.load(str(tmp_path / "missing"))
