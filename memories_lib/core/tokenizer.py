"""A word-level tokenizer for small worlds, saved and loaded like any Hugging Face tokenizer.

Stable Diffusion uses CLIP's BPE tokenizer; the embedded shapes world and the tiny test
models speak a vocabulary of a few dozen words, for which a word-level tokenizer is
exact. It is a ``PreTrainedTokenizerFast``, so ``AutoTokenizer.from_pretrained`` loads
it from a diffusers-layout ``tokenizer/`` folder just as it loads CLIP's.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

# CLIPTextModel pools at the end token. With eos_token_id == 2 it silently falls back to
# an old rule (the highest token id), so the end token gets id 3.
SPECIAL_TOKENS = {"<pad>": 0, "<bos>": 1, "<unk>": 2, "<eos>": 3}


def build_word_tokenizer(words: Iterable[str], max_length: int) -> PreTrainedTokenizerFast:
    """A lower-case word tokenizer over ``words`` that pads every prompt to ``max_length``."""
    vocab = dict(SPECIAL_TOKENS)
    for word in sorted({w.lower() for w in words}):
        if word not in vocab:
            vocab[word] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    core.normalizer = None
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>",
        special_tokens=[("<bos>", SPECIAL_TOKENS["<bos>"]), ("<eos>", SPECIAL_TOKENS["<eos>"])],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=max_length,
        do_lower_case=True,
    )
    return tok


def tokenize(tokenizer, prompts: list[str]):
    """Token ids of ``prompts``, lower-cased, padded/truncated to the tokenizer's max length."""
    return tokenizer(
        [p.lower() for p in prompts],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
