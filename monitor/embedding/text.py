"""Text encoders: the paper's XLM-R embedding layer, and masked mean pooling of any HF encoder.

``xlmr_embedding_layer`` (arXiv 2502.00577): XLM-RoBERTa's embedding layer only (word +
position + token-type embeddings, LayerNorm), which is ``hidden_states[0]`` of a full forward;
the model is loaded with zero transformer layers, so the 12 layers are neither allocated nor
run. Pooling: masked mean over the tokens after the first (<s>), max 512 tokens, L2-normalised.

``hf_mean_pool``: the last hidden state of any transformers encoder (sentence-transformers
directories included), masked mean over all tokens, L2-normalised.

Texts are tokenized in one call, sorted by length and run in batches of at most
``batch_tokens`` padded tokens, so a batch computes little padding whatever the mix of lengths
(fixed batches of 32 computed about six times the real tokens on a mix of LLaVA benchmark
prompts and answers). The rows equal a per-text forward up to float rounding. Backend
``torch_int8`` (``hf_mean_pool`` on CPU) runs the Linear layers in int8 dynamic quantisation:
faster, other rows, another fingerprint.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from monitor.embedding.base import (
    Embeddings,
    EncoderOptions,
    LoadedEncoder,
    fingerprint,
    load_error,
    module_sha256,
    quiet_transformers,
    unit_rows,
)
from monitor.embedding.batching import (
    EmbeddingCache,
    content_key,
    encode_with_cache,
    length_grouped_batches,
    token_budget_batches,
)
from monitor.errors import EncoderError, InvalidInputError
from monitor.files import sha256_hex

# Texts are cut to max_tokens * CHARS_PER_TOKEN characters before tokenizing, so a 20 MB prompt
# costs what a page does (tokenizing it whole took 111 s). Real text averages 3-6 characters a
# token (English about 4; code and CJK fewer), so 32 leaves a margin of 5x or more: the first
# max_tokens tokens, all the encoder keeps, come from well inside the cut. Only text averaging
# over 32 characters a token over its first max_tokens tokens (long runs of whitespace or of
# characters the tokenizer folds into one token) is embedded from fewer tokens than max_tokens.
CHARS_PER_TOKEN = 32


class HFTextEncoder(LoadedEncoder):
    """Shared loading, tokenising, batching and caching; subclasses choose layer and pooling."""

    kind = "hf_mean_pool"
    pooling = "last_hidden_state_masked_mean"

    def __init__(self, model: str, options: EncoderOptions) -> None:
        from transformers import AutoModel, AutoTokenizer

        super().__init__(model, options)
        try:
            with quiet_transformers():
                self.tokenizer = AutoTokenizer.from_pretrained(model, **self.hub_kwargs)
                network = AutoModel.from_pretrained(
                    model, dtype=torch.float32, **self.hub_kwargs, **self._model_overrides()
                )
        except (OSError, ValueError, KeyError) as exc:
            raise load_error(self.kind, model, exc) from exc
        if self.tokenizer.pad_token_id is None:
            raise EncoderError(f"the tokenizer of {model!r} has no padding token")
        self.network = network.eval()
        self.dim = int(network.config.hidden_size)
        limit = int(getattr(self.tokenizer, "model_max_length", 0) or 0)
        self.max_tokens = (
            min(options.max_tokens, limit) if 1 < limit < 1_000_000 else options.max_tokens
        )
        self.max_chars = self.max_tokens * CHARS_PER_TOKEN
        self.fingerprint = fingerprint(
            self.kind,
            dim=self.dim,
            pooling=self.pooling,
            revision=options.revision,
            weights_sha256=module_sha256(self._weights()),
            preprocessing={
                "tokenizer": tokenizer_sha256(self.tokenizer),
                "truncation_side": getattr(self.tokenizer, "truncation_side", "right"),
                "max_tokens": self.max_tokens,
                "max_chars": self.max_chars,
            },
            backend=options.backend,
        )
        self.network.to(device=self.device, dtype=self.dtype)
        if options.backend == "torch_int8":
            self.network = self._quantised(self.network)
        self._cache = EmbeddingCache(options.cache_size)

    def _quantised(self, network: torch.nn.Module) -> torch.nn.Module:
        """The network with its Linear layers in int8 dynamic quantisation (CPU, float32)."""
        if self.device.type != "cpu" or self.dtype != torch.float32:
            raise EncoderError(
                "backend 'torch_int8' runs on the CPU in float32: set encoders.device = 'cpu' "
                f"and dtype 'auto' or 'float32' (got {self.device.type}, {self.dtype})"
            )
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # torch marks this API deprecated in favour of torchao, a further dependency; it still
        # ships and works, so its warnings are not the operator's to act on. Weights per output
        # channel: on MiniLM the mean cosine with exact rows rose from 0.92 (per tensor) to
        # 0.96 at the same speed.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            quantised: torch.nn.Module = quantize_dynamic(  # type: ignore[no-untyped-call]
                network, {torch.nn.Linear: per_channel_dynamic_qconfig}
            )
        return quantised

    def _model_overrides(self) -> dict[str, Any]:
        return {}

    def _weights(self) -> torch.nn.Module:
        module: torch.nn.Module = self.network
        return module

    def encode_texts(self, texts: Sequence[str]) -> Embeddings:
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInputError(
                    f"text {i} is a {type(text).__name__}, not a string", field="text"
                )
        items = list(texts)
        keys = [content_key(t) for t in items]
        return encode_with_cache(
            keys,
            self.dim,
            self._cache,
            lambda positions: self._embed([items[p] for p in positions]),
        )

    def _embed(self, texts: list[str]) -> Embeddings:
        clipped = [text[: self.max_chars] for text in texts]
        ids: list[list[int]] = self.tokenizer(
            clipped, truncation=True, max_length=self.max_tokens, padding=False
        )["input_ids"]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        pad = int(self.tokenizer.pad_token_id)
        lengths = [len(x) for x in ids]
        batches = (
            token_budget_batches(lengths, self.options.batch_tokens)
            if self.options.batch_tokens
            else length_grouped_batches(lengths, self.options.batch_size)
        )
        for batch in batches:
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            with torch.inference_mode():
                pooled = self._pool(input_ids.to(self.device), mask.to(self.device))
            out[batch] = unit_rows(pooled)
        return out

    def _pool(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.network(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return masked_mean(hidden, mask)


class XlmrEmbeddingLayerEncoder(HFTextEncoder):
    """The paper's text embedding: XLM-R embedding-layer output, mean over tokens after <s>."""

    kind = "xlmr_embedding_layer"
    pooling = "embedding_layer_masked_mean_without_first_token"

    def _model_overrides(self) -> dict[str, Any]:
        return {"num_hidden_layers": 0}  # only the embedding layer is used: skip the rest

    def _quantised(self, network: torch.nn.Module) -> torch.nn.Module:
        raise EncoderError(
            "backend 'torch_int8' quantises Linear layers, and xlmr_embedding_layer runs none: "
            "use backend 'torch'"
        )

    def _weights(self) -> torch.nn.Module:
        embeddings: torch.nn.Module = self.network.embeddings
        return embeddings

    def _pool(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.network.embeddings(input_ids=input_ids)
        return masked_mean(hidden[:, 1:], mask[:, 1:])


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def tokenizer_sha256(tokenizer: Any) -> str:
    """sha256 of everything that decides a tokenizer's ids: for a fast tokenizer its full
    serialisation (model and vocabulary, normaliser, pre-tokenizer, post-processor, added
    tokens) without the call-time padding and truncation state (transformers sets those while
    encoding, so the hash would change after the first call); for a slow one, its class, vocabulary,
    special tokens, init options and sentencepiece model."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    else:
        state = {
            "class": type(tokenizer).__name__,
            "vocab": sorted(tokenizer.get_vocab().items()),
            "special": tokenizer.special_tokens_map,
            # File locations differ between machines; the content they point to is hashed.
            "init": {
                key: value
                for key, value in tokenizer.init_kwargs.items()
                if not key.endswith("_file") and key != "name_or_path"
            },
        }
        sentencepiece = getattr(tokenizer, "sp_model", None)
        if sentencepiece is not None:  # piece scores decide the segmentation, not the vocab alone
            proto = sentencepiece.serialized_model_proto()
            state["sentencepiece"] = sha256_hex(proto)
    text = json.dumps(state, sort_keys=True, default=str)
    return sha256_hex(text)
