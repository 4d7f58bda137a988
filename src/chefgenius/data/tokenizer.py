"""The tokenizer: trained on the training split (byte-level BPE) or loaded from a model, and saved with
the title words it carries (:mod:`title_words`). Data preparation, checkpoints and models all use it.

A local path that does not exist is named as missing, never looked up on a hub.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from chefgenius.data import title_words
from chefgenius.data.recipe_format import CHAT_TEMPLATE
from chefgenius.errors import ModelLoadError

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the training split; deterministic for the same texts."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   bos_token=EOS)


def load_tokenizer(path: str | Path) -> Any:
    check_model_source(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load a tokenizer from {path}: {str(err).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # GPT-2 has no pad token; padding is masked out anyway
    if Path(path).is_dir():
        title_words.attach(tok, title_words.load(Path(path)))
    return tok


def save_tokenizer(tokenizer: Any, directory: str | Path) -> None:
    """The tokenizer's files and the title words it carries (:mod:`title_words`), which
    :func:`load_tokenizer` gives back, and the recipe chat template where it has none."""
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(directory))
    title_words.save(Path(directory), title_words.of(tokenizer))


def looks_like_hub_id(name: str) -> bool:
    """``owner/name`` (or a bare name) that is not a local path: only then may a hub be asked."""
    if name.startswith(("/", ".", "~")) or Path(name).exists():
        return False
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name))


def check_model_source(path: str | Path) -> None:
    """A local path that does not exist is named as missing, never looked up on a hub."""
    text = str(path)
    if not Path(text).exists() and not looks_like_hub_id(text):
        raise ModelLoadError(f"{text} does not exist (pass a model directory, a checkpoint directory or a hub id)")
