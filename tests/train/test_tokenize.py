from transformers import AutoTokenizer

from apprentice.dataset import IGNORE_INDEX, render_prompt, tokenize_rows
from apprentice.formats import messages_to_prompt

ROW = {
    "messages": [
        {"role": "system", "content": "Classify."},
        {"role": "user", "content": "[[ticket]]\nrefund me"},
    ],
    "completion": "[[category]]\nbilling",
}


def test_causal_labels_cover_only_the_completion_and_eos(tiny_causal):
    tok = AutoTokenizer.from_pretrained(tiny_causal)
    (feature,), report = tokenize_rows([ROW], tok, kind="causal")
    prompt_ids = tok(messages_to_prompt(ROW["messages"]), add_special_tokens=False)["input_ids"]
    target_ids = tok(ROW["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert feature["input_ids"] == prompt_ids + target_ids
    assert feature["labels"] == [IGNORE_INDEX] * len(prompt_ids) + target_ids
    assert report.to_dict() == {"rows": 1, "kept": 1, "prompts_truncated": 0, "targets_too_long": 0}


def test_seq2seq_rows(tiny_t5):
    tok = AutoTokenizer.from_pretrained(tiny_t5)
    (feature,), _ = tokenize_rows([ROW], tok, kind="seq2seq")
    assert feature["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(feature["labels"], skip_special_tokens=True) == ROW["completion"]


def test_truncation_cuts_the_prompt_start_and_never_the_target(tiny_causal):
    tok = AutoTokenizer.from_pretrained(tiny_causal)
    long_row = {
        **ROW,
        "messages": [{"role": "user", "content": "word " * 400 + "[[ticket]]\nrefund me"}],
    }
    huge_target = {**ROW, "completion": "billing " * 400}
    features, report = tokenize_rows([long_row, huge_target], tok, kind="causal", max_length=64)
    assert (report.kept, report.prompts_truncated, report.targets_too_long) == (1, 1, 1)
    (feature,) = features
    assert len(feature["input_ids"]) == 64
    target = [t for t in feature["labels"] if t != IGNORE_INDEX]
    assert tok.decode(target[:-1]) == ROW["completion"]  # intact
    text = tok.decode(feature["input_ids"]).removesuffix("</s>")
    assert text.endswith("refund me\n<|assistant|>\n" + ROW["completion"])
    # The start of the prompt was cut: fewer of the 400 words are left, and the text starts
    # inside that run of words (where exactly depends on how the tokenizer merged them).
    assert text.lstrip().startswith(("word", "ord", "rd", "d ")) and text.count("word") < 400


def test_chat_template_is_used_when_the_tokenizer_has_one(tiny_causal):
    tok = AutoTokenizer.from_pretrained(tiny_causal)
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
    )
    prompt = render_prompt(ROW["messages"], tok, "causal")
    assert prompt == "[system] Classify.\n[user] [[ticket]]\nrefund me\n[assistant] "
    (feature,), _ = tokenize_rows([ROW], tok, kind="causal")
    assert (
        feature["input_ids"][: len(tok(prompt, add_special_tokens=False)["input_ids"])]
        == tok(prompt, add_special_tokens=False)["input_ids"]
    )
