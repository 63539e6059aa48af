"""recipes/hotpotqa (the DSPy paper's T5 recipe) as far as a CPU without the data, the T5
weights or the teacher's key can take it: the recipe validates; a handful of traces through
the real program become rows in the T5 format; T5's own tokenizer carries them within the
recipe's lengths; a reply written in the format parses back."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from recipes.hotpotqa.program import MultiHop, metric

import apprentice as ap
import t5_vocab
from apprentice.dataset import build_dataset, load_dataset_dir, tokenize_rows
from apprentice.recipe import load_recipe
from apprentice.traces import bootstrap_traces

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes/hotpotqa/t5.yaml"
PEOPLE = [("Ada Brun", "Lyon", "France"), ("Ivo Marek", "Brno", "Czechia"),
          ("Lena Vik", "Bergen", "Norway"), ("Tomas Ruiz", "Cusco", "Peru")]  # fmt: skip
WORDS = [
    "the",
    "river",
    "valley",
    "hosted",
    "a",
    "festival",
    "of",
    "music",
    "while",
    "local",
    "councils",
    "debated",
    "new",
    "railway",
    "lines",
    "and",
    "historians",
    "recorded",
    "{braces}",
    "of",
    "the",
    "old",
    "town,",
    "its",
    "bridges",
    "and",
    "markets",
]


def _paragraph(rng: random.Random, title: str, first: str) -> tuple[str, list[str]]:
    # HotPotQA's distractor paragraphs run to ~4 sentences of ~20 words: keep that size.
    sentences = [first] + [
        " ".join(rng.choice(WORDS) for _ in range(20)).capitalize() + ". " for _ in range(3)
    ]
    return title, sentences


def _examples() -> list[ap.Example]:
    rng = random.Random(0)
    examples = []
    for person, city, country in PEOPLE:
        paragraphs = [
            _paragraph(rng, person, f"{person} is a painter born in {city}. "),
            _paragraph(rng, city, f"{city} is a city in {country}. "),
        ] + [_paragraph(rng, f"Topic {i}", "An unrelated paragraph. ") for i in range(8)]
        rng.shuffle(paragraphs)
        context = {"title": [t for t, _ in paragraphs], "sentences": [s for _, s in paragraphs]}
        examples.append(
            ap.Example(
                question=f"In which country was {person} born?", answer=country, context=context
            ).with_inputs("question", "context")
        )
    return examples


def _teacher(signature, inputs: dict) -> dict:
    """A teacher that reads the passages: the person, then their city, then the country."""
    question, gathered = inputs["question"], inputs["context"]
    person = question.removeprefix("In which country was ").removesuffix(" born?")
    text = " ".join(gathered)
    if "answer" in signature.output_fields:
        country = text.split(" is a city in ")[1].split(".")[0] if " is a city in " in text else ""
        return {
            "reasoning": f"The passages say where {person} was born.\nThat city is in {country}.",
            "answer": country,
        }
    if " born in " in text:
        city = text.split(" born in ")[1].split(".")[0]
        return {"reasoning": f"{person} was born in {city};\nnow find its country.", "query": city}
    return {"reasoning": f"First find {person}.\nThen their city.", "query": person}


def test_the_hotpotqa_t5_recipe_validates_and_fits_t5(tmp_path):
    recipe = load_recipe(RECIPE)
    assert recipe.student.model == "google-t5/t5-large" and recipe.dataset.format == "auto"
    assert recipe.serve.backend == "local"  # vLLM serves no encoder-decoder model
    train = recipe.train
    assert train.max_length <= 512  # T5's context: what serving holds prompts to

    program = MultiHop(**recipe.program_args)
    examples = _examples()
    result = bootstrap_traces(
        program, examples, teacher=ap.ScriptedLM(_teacher), metric=metric,
        store=tmp_path / "traces", progress=False,
    )  # fmt: skip
    assert result.kept == len(examples)
    fmt = ap.T5Format()  # what dataset.format: auto picks for a T5 student
    manifest = build_dataset(tmp_path / "traces", program, tmp_path / "ds", format=fmt)
    data, _ = load_dataset_dir(tmp_path / "ds")
    rows = [*data["train"], *data["validation"]]
    assert manifest.format == "t5" and len(rows) == 3 * len(examples)  # two hops + the answer

    tokenizer = t5_vocab.t5_tokenizer(tmp_path)
    features, report = tokenize_rows(
        rows, tokenizer, kind="seq2seq",
        max_length=train.max_length, max_target_length=train.max_target_length,
    )  # fmt: skip
    assert report.kept == len(rows), report.to_dict()  # every row fits: nothing dropped
    longest = max(len(f["input_ids"]) for f in features)
    assert 200 < longest <= train.max_length, longest  # 487 of 512 (README)
    for row, feature in zip(rows, features, strict=True):
        assert tokenizer.unk_token_id not in feature["input_ids"] + feature["labels"]
        reply = tokenizer.decode(feature["labels"], skip_special_tokens=True)
        answers = row["predictor"] == "generate_answer"
        signature = (program.generate_answer if answers else program.generate_query[0]).signature
        parsed = fmt.parse(signature, reply)
        assert parsed == fmt.parse(signature, row["completion"])
        assert "\n" in parsed["reasoning"]  # the reasoning's line break came through T5


@pytest.mark.parametrize("reply", [
    "[[reasoning]] Ada was born in Lyon.|nLyon is in France. [[answer]] France",
    "[[ reasoning ]] Ada was born in Lyon.|nLyon is in France.  [[ answer ]]  France ",
])  # fmt: skip
def test_a_t5_reply_in_the_format_parses(reply):
    signature = MultiHop().generate_answer.signature
    assert ap.T5Format().parse(signature, reply) == {
        "reasoning": "Ada was born in Lyon.\nLyon is in France.",
        "answer": "France",
    }
