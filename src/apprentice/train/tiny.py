"""Tiny students built from a config, for tests and the offline demo (no model hub).

The tokenizer is a byte-level BPE trained on the task's own text in under a second:
sequences come out 4-5x shorter than with raw bytes, which is what lets a random-init
student learn a templated task in seconds on a CPU. Models and tokenizers are saved
with ``save_pretrained`` so the real loading code (``from_pretrained(path)``) runs on them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

__all__ = ["make_tiny_student", "task_corpus", "train_bpe_tokenizer", "train_t5_tokenizer"]

SPECIALS = ["<pad>", "</s>", "<unk>", "<s>"]


def train_bpe_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int = 600,
    kind: Literal["causal", "seq2seq"] = "causal",
    chat_template: str | None = None,
):
    """A byte-level BPE tokenizer trained on ``texts``; T5-style tokenizers append ``</s>``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # Merges may cross words but not lines (use_regex=False after a newline split), so the
    # text every row repeats (instructions, field markers) collapses into a few tokens.
    # A word holding a digit (an id, a number) is kept apart from its neighbours and its
    # digits are single tokens, so copying it is a token-by-token copy: fused into a phrase
    # token ("...order A" + digits) a 1M-parameter student copied order ids right 17% of the
    # time, against 1.00 for the category.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="merged_with_previous"),
            pre_tokenizers.Split(Regex(r"\w*\d\w*"), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if kind == "seq2seq":
        eos = tokenizer.token_to_id("</s>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
        )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
        padding_side="left" if kind == "causal" else "right",
    )
    if chat_template is not None:
        wrapped.chat_template = chat_template
    return wrapped


def train_t5_tokenizer(texts: Iterable[str], *, vocab_size: int = 1000):
    """A tokenizer with a real T5 tokenizer's rules, trained on ``texts``: NFKC
    normalization, newlines and tabs turned into spaces, runs of spaces collapsed and the
    ends stripped (T5's ``nmt_nfkc`` and SentencePiece), words marked with ``▁``, no token
    for ``{ } < `` ` ~ ^`` or a backslash (T5's vocabulary has none: they become
    ``<unk>``), ``</s>`` appended. A tiny T5 student trained with it fails wherever a real
    T5 would, so the tests and the demo meet what a real T5 meets. Digits are single tokens
    (as in ``train_bpe_tokenizer``, for the tiny student's copying of ids).

    Its pieces are learnt by BPE, not by a unigram model as T5's were: on these templated
    corpora both ``tokenizers``' and SentencePiece's unigram trainers kept frequent words in
    pieces of one or two letters (prompts 2.5x longer); the rules above are what T5's
    tokenizer imposes on a format, and they are the same."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    from apprentice.formats.t5 import SAFE

    smallest = len(SAFE) + len(SPECIALS)  # every character the T5 format writes, and specials
    if vocab_size < smallest:
        raise ValueError(
            f"vocab_size {vocab_size} is too small for a T5-like tokenizer: it must hold the "
            f"{smallest} characters and special tokens the T5 format uses; give at least {smallest}"
        )
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Nmt(),
            normalizers.NFKC(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=sorted(SAFE - {" "}) + ["\u2581"],  # what the T5 format writes
        show_progress=False,
    )
    # Only characters a T5 vocabulary holds are learnt: { } < ` and others stay <unk>.
    keep = SAFE | {"\n", "\t"}
    tokenizer.train_from_iterator(
        ("".join(c for c in text if c in keep) for text in texts), trainer=trainer
    )
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        bos_token="<s>",
        padding_side="right",
        model_max_length=512,  # T5's: its relative positions set no limit in the config
    )


def make_tiny_student(
    kind: Literal["causal", "seq2seq"],
    texts: Iterable[str],
    out_dir: str | Path,
    *,
    vocab_size: int = 600,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    max_positions: int = 2048,
    chat_template: str | None = None,
    seed: int = 0,
) -> Path:
    """Builds a random-init student of ``kind`` with a task-trained tokenizer; returns its path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    out_dir = Path(out_dir)
    if kind == "seq2seq":
        tokenizer = train_t5_tokenizer(texts, vocab_size=vocab_size)
    else:
        tokenizer = train_bpe_tokenizer(texts, vocab_size=vocab_size, chat_template=chat_template)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIALS}
    torch.manual_seed(seed)
    if kind == "causal":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=max_positions,
            tie_word_embeddings=True,
            pad_token_id=ids["<pad>"],
            bos_token_id=ids["<s>"],
            eos_token_id=ids["</s>"],
        )
        model = LlamaForCausalLM(config)
    elif kind == "seq2seq":
        config = T5Config(
            vocab_size=len(tokenizer),
            d_model=hidden_size,
            d_ff=hidden_size * 2,
            d_kv=hidden_size // num_heads,
            num_layers=num_layers,
            num_decoder_layers=num_layers,
            num_heads=num_heads,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,  # as the causal student: dropout only slows a tiny model here
            # A random-init T5 with an untied lm_head starts at a huge loss: tie them.
            tie_word_embeddings=True,
            pad_token_id=ids["<pad>"],
            eos_token_id=ids["</s>"],
            decoder_start_token_id=ids["<pad>"],
        )
        model = T5ForConditionalGeneration(config)
    else:
        raise ValueError(f"kind must be 'causal' or 'seq2seq', got {kind!r}")
    model.generation_config.pad_token_id = ids["<pad>"]
    model.generation_config.eos_token_id = ids["</s>"]
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def task_corpus(program, examples, teacher, format=None) -> list[str]:
    """The text a tiny student's tokenizer is trained on: every prompt and completion the
    teacher produces when it runs ``program`` over ``examples``, rendered in ``format`` (the
    student's: ``T5Format()`` for a tiny T5; None: the format in force)."""
    from apprentice.formats import messages_to_prompt
    from apprentice.settings import context
    from apprentice.traces.capture import run_traced

    runner = program.deepcopy()
    runner.set_lm(teacher)
    texts = []
    with context(**({"format": format} if format is not None else {})):
        for example in examples:
            for step in run_traced(runner, example).steps:
                if step.completion is not None:
                    texts.append(messages_to_prompt(step.messages) + step.completion)
    if not texts:
        raise ValueError("the teacher produced no completions to train a tokenizer on")
    return texts
