"""`apprentice eval PROGRAM.json --program ... --data FILE --metric ...`: a saved program
scored on a data file, with the report's table; the class is named by the user, never by
the file."""

from __future__ import annotations

import json

from recipes.demo.task import TicketTriage, make_examples, metric

import apprentice as ap
from apprentice.cli import main
from tiny_run import trained_run

STAGES = ("bootstrap", "dataset", "train", "bind")


def test_a_saved_program_is_scored_on_a_data_file(tmp_path, capsys):
    root = trained_run(tmp_path / "run", "serve.max_new_tokens=16", stages=STAGES)
    examples = make_examples(3, seed=11)
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in examples))
    program = str(root / "program.json")
    common = ["--data", str(data), "--metric", "recipes.demo.task:metric", "-q"]

    # The class comes from the command line; without it the error quotes the file's record.
    assert main(["eval", program, *common]) == 1
    err = capsys.readouterr().err
    assert "--program pkg.module:Class" in err and "recipes.demo.task.TicketTriage" in err

    out = tmp_path / "eval"
    args = ["eval", program, "--program", "recipes.demo.task:TicketTriage", *common]
    assert main([*args, "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| system | metric |") and "| program.json |" in table
    saved = json.loads((out / "eval.json").read_text())["eval"]
    assert saved["n"] == 3 and set(saved["predictors"]) == {"classify", "extract"}
    assert len(json.loads((out / "results.json").read_text())["results"]) == 3
    assert (out / "report.md").exists()
    # The same score as the program loaded and evaluated by hand.
    loaded = TicketTriage().load(program)
    by_hand = ap.Evaluate(devset=examples, metric=metric, display_progress=False)(loaded)
    assert saved["score"] == by_hand.score
    assert f"| {by_hand.score:.3f} |" in table

    # Input fields default to forward()'s arguments; a field the file lacks is named.
    assert main([*args, "--inputs", "ticket,channel"]) == 1
    assert "input field(s) ['channel'] are not in" in capsys.readouterr().err
