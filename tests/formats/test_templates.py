"""Chat templates as users meet them (the real Jinja of Llama 3.1/3.2, Gemma-2, Mistral
v0.1/v0.2, Qwen2.5, ChatML and SmolLM2: tests/formats/templates): every one renders a
format's messages, a system message is folded where the template refuses one, the date a
template writes is the one the dataset fixed, and the prompt a row is trained on is token
for token the prompt a LocalLM serves."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from recipes.demo.task import TicketTriage

import apprentice as ap
from apprentice.dataset import IGNORE_INDEX, tokenize_rows
from apprentice.formats.prompt import NO_TEMPLATE, PromptTemplate, messages_to_prompt, render_prompt
from apprentice.train.tiny import make_tiny_student

TEMPLATES = {
    p.stem: p.read_text() for p in sorted((Path(__file__).parent / "templates").glob("*.jinja"))
}
REFUSE_SYSTEM = {"gemma2", "mistral_v0_1", "mistral_v0_2"}
FIXED = "01 Jan 2020"  # a date a dataset fixed, long before today
SIGNATURE = TicketTriage().classify.signature
DEMO = {"ticket": "I was charged twice", "reasoning": "Money.", "category": "billing"}
INPUTS = {"ticket": "The app crashes when I log in"}


def messages():
    return ap.ChatFormat().render(SIGNATURE, [DEMO], INPUTS)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    texts = [messages_to_prompt(messages())] * 20 + list(TEMPLATES.values())
    return make_tiny_student(
        "causal", texts, tmp_path_factory.mktemp("tpl"), hidden_size=32, num_layers=1
    )


def test_there_are_the_families_the_issue_names():
    assert {"llama3_1", "llama3_2", "gemma2", "mistral_v0_1", "qwen2_5", "chatml"} <= set(TEMPLATES)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_renders_the_system_text_and_the_inputs(student, name):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student)
    system = messages()[0]["content"]
    template = PromptTemplate(TEMPLATES[name], (("date_string", FIXED),))
    prompt = render_prompt(messages(), tokenizer, "causal", **template.options())
    assert system in prompt and INPUTS["ticket"] in prompt and DEMO["ticket"] in prompt
    if name in REFUSE_SYSTEM:
        # Folded into the first user turn, a blank line before the user's text.
        assert f"{system}\n\n{ap.ChatFormat().user_message(SIGNATURE, DEMO)}" in prompt
    if "date_string" in TEMPLATES[name]:
        assert f"Today Date: {FIXED}" in prompt  # never today's date
        assert time.strftime("%d %b %Y") not in prompt


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_the_trained_prompt_is_the_served_prompt(student, name):
    template = PromptTemplate(TEMPLATES[name], (("date_string", FIXED),))
    lm = ap.LocalLM(student, template=template, max_new_tokens=2)
    row = {"messages": messages(), "completion": "[[category]]\nbug"}
    (feature,), _ = tokenize_rows([row], lm.engine.tokenizer, kind="causal", template=template)
    pairs = zip(feature["input_ids"], feature["labels"], strict=True)
    trained = [token for token, label in pairs if label == IGNORE_INDEX]
    assert lm.engine.encode(row["messages"], lm.template) == trained
    response = lm.generate([ap.Request(messages=tuple(row["messages"]))])[0]
    assert response.usage.prompt_tokens == len(trained)
    # Saved and loaded with a program, the LM keeps the template.
    assert ap.LocalLM(**_options(lm.to_config())).template == template


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_a_baked_prompt_is_the_inputs_alone_in_every_template(student, name):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student)
    baked = ap.formats.format_named("baked").render(SIGNATURE, [DEMO], INPUTS)
    template = PromptTemplate(TEMPLATES[name], (("date_string", FIXED),))
    prompt = render_prompt(baked, tokenizer, "causal", **template.options())
    user = baked[1]["content"]
    assert user in prompt and DEMO["ticket"] not in prompt
    assert SIGNATURE.instructions not in prompt
    # No template writes its default system text (SmolLM2, Qwen2.5 do without a system
    # message); one that refuses a system message renders the user turn alone.
    assert "You are" not in prompt
    if name in REFUSE_SYSTEM:
        assert prompt == render_prompt(baked[1:], tokenizer, "causal", **template.options())


def _options(config: dict) -> dict:
    config = {k: v for k, v in config.items() if k != "backend"}
    config["base_model"] = config.pop("model")
    return config


def test_the_tokenizers_own_template_with_a_date_and_none(tmp_path):
    texts = [messages_to_prompt(messages())] * 20
    student = make_tiny_student(
        "causal", texts, tmp_path, hidden_size=32, num_layers=1, chat_template=TEMPLATES["llama3_2"]
    )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student)
    today = render_prompt(messages(), tokenizer, "causal")
    fixed = render_prompt(messages(), tokenizer, "causal", template_vars={"date_string": FIXED})
    assert time.strftime("%d %b %Y") in today and FIXED in fixed and today != fixed
    plain = render_prompt(messages(), tokenizer, "causal", chat_template=NO_TEMPLATE)
    assert plain == messages_to_prompt(messages())


def test_a_template_that_refuses_even_the_folded_messages_says_what_to_do(student):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student)
    strict = (
        "{{ raise_exception('only one message') if messages|length > 1 }}{{ messages[0].content }}"
    )
    with pytest.raises(ValueError, match="student.chat_template"):
        render_prompt(messages(), tokenizer, "causal", chat_template=strict)


def test_the_dataset_fixes_the_date_and_the_binding_serves_it(tmp_path):
    from recipes.demo.task import make_examples, metric, teacher

    from apprentice.dataset import load_dataset_dir
    from apprentice.train.tiny import task_corpus

    trainset = make_examples(4)
    lm = ap.ScriptedLM(teacher)
    student = make_tiny_student(
        "causal",
        task_corpus(TicketTriage(), trainset, lm),
        tmp_path / "student",
        hidden_size=32,
        num_layers=1,
        chat_template=TEMPLATES["llama3_2"],
    )
    template_file = tmp_path / "gemma.jinja"
    template_file.write_text(TEMPLATES["gemma2"])
    compiled = ap.BootstrapFinetune(
        metric=metric,
        threshold=1.0,
        student=student,
        run_dir=tmp_path / "run",
        progress=False,
        val_fraction=0.0,
        chat_template=str(template_file),
        serve={"max_new_tokens": 2},
        train=ap.TrainConfig(full_finetune=True, max_steps=1, batch_size=4),
    ).compile(TicketTriage(), trainset=trainset, teacher=lm)
    _, manifest = load_dataset_dir(tmp_path / "run" / "dataset")
    recorded = PromptTemplate.from_config(manifest.template)
    assert recorded.chat_template == TEMPLATES["gemma2"]
    assert dict(recorded.variables) == {"date_string": time.strftime("%d %b %Y")}
    loaded = TicketTriage().load(tmp_path / "run" / "program.json", trusted=True)
    for program in (compiled, loaded):
        assert program.classify.lm.template == recorded
        assert program.extract.lm.template == recorded


@pytest.mark.parametrize("value", ["no-such-file.jinja", "plain words"])
def test_a_chat_template_that_is_neither_file_nor_jinja_is_refused(tmp_path, value):
    from apprentice.student_prompt import prompt_template

    with pytest.raises(ValueError, match="not a file, not Jinja text"):
        prompt_template(value)
