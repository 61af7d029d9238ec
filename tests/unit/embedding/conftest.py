"""Tiny randomly initialised CLIP and XLM-R models, saved with save_pretrained to temp dirs.

Nothing is downloaded: the XLM-R tokenizer is a small Unigram model trained here on real
LLaVA-Bench answers, with XLM-R's special tokens (<s>=0, <pad>=1, </s>=2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import LLAVA_SHIFT

transformers = pytest.importorskip("transformers")


def _train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    lines = (LLAVA_SHIFT / "qa90_gpt4_answer.jsonl").read_text().splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(
        texts, trainers.UnigramTrainer(vocab_size=400, special_tokens=specials, unk_token="<unk>")
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return transformers.XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token="<mask>",
        model_max_length=512,
    )


def make_xlmr(directory: Path, *, seed: int = 0, hidden: int = 32) -> Path:
    tokenizer = _train_tokenizer()
    tokenizer.save_pretrained(directory)
    config = transformers.XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=514,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    transformers.XLMRobertaModel(config).save_pretrained(directory)
    return directory


def make_clip(directory: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    config = transformers.CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 20,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 99,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    transformers.CLIPModel(config).save_pretrained(directory)
    processor = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory


@pytest.fixture(scope="session")
def tiny_xlmr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_xlmr(tmp_path_factory.mktemp("xlmr"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip"))
