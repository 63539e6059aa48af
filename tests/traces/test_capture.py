import asyncio
import threading

from recipes.demo.task import TicketTriage, make_examples, metric, teacher

import apprentice as ap
from apprentice.traces import capture, example_id, run_traced


class Hop(ap.Module):
    def __init__(self):
        self.generate_query = ap.Predict("question -> query")


class MultiHop(ap.Module):
    def __init__(self):
        self.hops = [Hop(), Hop()]
        self.answer = ap.Predict("question, queries: list[str] -> answer")

    def forward(self, question):
        queries = [hop.generate_query(question=question).query for hop in self.hops]
        return self.answer(question=question, queries=queries)


def scripted(sig, inputs):
    return {"query": f"q:{inputs['question']}", "answer": f"a:{inputs['question']}"}


def test_steps_carry_paths_prompts_completions_outputs_and_lm():
    program = MultiHop()
    program.set_lm(ap.ScriptedLM(scripted))
    with capture(program) as steps:
        program(question="why?")
    assert [s.predictor for s in steps] == [
        "hops.0.generate_query",
        "hops.1.generate_query",
        "answer",
    ]
    last = steps[-1]
    assert last.inputs == {"question": "why?", "queries": ["q:why?", "q:why?"]}
    assert last.output == {"answer": "a:why?"}
    assert last.completion == "[[answer]]\na:why?"
    assert last.messages[-1]["role"] == "user" and "[2] q:why?" in last.messages[-1]["content"]
    assert last.lm["backend"] == "scripted"
    assert last.signature["fields"][-1]["name"] == "answer"
    assert last.prompt_tokens > 0 and last.error is None


def test_capture_is_per_thread_and_per_task():
    program = MultiHop()
    program.set_lm(ap.ScriptedLM(scripted))
    results = {}
    barrier = threading.Barrier(4)

    def worker(name):
        with capture(program) as steps:
            barrier.wait()
            program(question=name)
        results[name] = steps

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, steps in results.items():
        assert len(steps) == 3 and all(s.inputs["question"] == name for s in steps)

    async def one(name):
        with capture(program) as steps:
            await program.hops[0].generate_query.acall(question=name)
            await asyncio.sleep(0)
            await program.answer.acall(question=name, queries=[])
        return name, steps

    async def main():
        return await asyncio.gather(*(one(f"a{i}") for i in range(5)))

    for name, steps in asyncio.run(main()):
        assert [s.inputs["question"] for s in steps] == [name, name]


def test_run_traced_records_failure_instead_of_raising():
    program = TicketTriage()
    program.set_lm(ap.ScriptedLM(lambda sig, inputs: "not the format at all"))
    example = make_examples(1)[0]
    trace = run_traced(program, example, metric=metric)
    assert not trace.ok and trace.error.startswith("ParseError")
    assert len(trace.steps) == 1 and trace.steps[0].error.startswith("ParseError")
    assert trace.steps[0].completions == ["not the format at all"]
    assert trace.prediction is None and trace.score is None


def test_run_traced_scores_and_ids():
    program = TicketTriage()
    program.set_lm(ap.ScriptedLM(teacher))
    example = make_examples(1)[0]
    trace = run_traced(program, example, metric=metric)
    assert trace.ok and trace.score == 1.0
    assert trace.prediction == {"category": example.category, "order_id": example.order_id}
    assert trace.example_id == example_id(example)
    assert example_id(example.copy(id=7)) == "7"
    roundtrip = ap.Trace.from_dict(trace.to_dict())
    assert roundtrip == trace


def test_metric_crash_is_recorded():
    program = TicketTriage()
    program.set_lm(ap.ScriptedLM(teacher))
    trace = run_traced(program, make_examples(1)[0], metric=lambda e, p, t: 1 / 0)
    assert trace.error.startswith("metric failed: ZeroDivisionError")
