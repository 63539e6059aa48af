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
    assert report.to_dict() == {"rows": 1, "kept": 1, "prompts_too_long": 0, "targets_too_long": 0}


def test_seq2seq_rows(tiny_t5):
    tok = AutoTokenizer.from_pretrained(tiny_t5)
    (feature,), _ = tokenize_rows([ROW], tok, kind="seq2seq")
    assert feature["input_ids"][-1] == tok.eos_token_id
    # The tiny T5's tokenizer has a real T5's rules: the newline after a marker is gone.
    assert tok.decode(feature["labels"], skip_special_tokens=True) == "[[category]] billing"


def test_too_long_rows_are_dropped_and_counted_never_cut(tiny_causal, tiny_t5):
    # The engines refuse a prompt beyond the context rather than cut it; training does the
    # same, so a student never learns a prompt without its header or markers.
    long_row = {
        **ROW,
        "messages": [{"role": "user", "content": "word " * 400 + "[[ticket]]\nrefund me"}],
    }
    huge_target = {**ROW, "completion": "billing " * 400}
    for student, kind in ((tiny_causal, "causal"), (tiny_t5, "seq2seq")):
        tok = AutoTokenizer.from_pretrained(student)
        rows = [long_row, ROW, huge_target]
        features, report = tokenize_rows(rows, tok, kind=kind, max_length=64)
        assert (report.kept, report.prompts_too_long, report.targets_too_long) == (1, 1, 1)
        assert report.dropped_indices == [0, 2]
        (feature,) = features
        (alone,), _ = tokenize_rows([ROW], tok, kind=kind, max_length=64)
        assert feature == alone  # the row that fits is kept whole


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
