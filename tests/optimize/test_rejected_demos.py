"""BootstrapFewShot on a program with Suggest: demos come from accepted steps only."""

from __future__ import annotations

from recipes.multihop.task import MultiHop, good_queries, make_examples, metric, teacher

import apprentice as ap


def test_bootstrap_few_shot_never_picks_a_rejected_query_as_a_demo():
    trainset = make_examples(40)
    optimizer = ap.BootstrapFewShot(metric=metric, max_bootstrapped_demos=12, max_labeled_demos=0)
    compiled = optimizer.compile(MultiHop(), trainset=trainset, teacher=ap.ScriptedLM(teacher))
    assert optimizer.stats["bootstrapped"] == 12
    for hop in compiled.generate_query:
        assert len(hop.demos) == 12
        for demo in hop.demos:
            # A demo holds the predictor's own fields: a re-run's feedback stays out of it.
            assert set(demo.keys()) == {"context", "question", "query"}
            assert demo.query in good_queries(demo.question), demo
    # The teacher stumbled in these runs: without the filter a rejected query would be here.
    stumbled = sum(
        s.rejected
        for e in trainset[:12]
        for s in ap.traces.run_traced(_taught(), e, metric=metric).steps
    )
    assert stumbled > 0


def _taught() -> MultiHop:
    program = MultiHop()
    program.set_lm(ap.ScriptedLM(teacher))
    return program
