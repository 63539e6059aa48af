"""code_fingerprint: changes with the code and its plain captured values, not with state."""

from __future__ import annotations

import functools

from apprentice.fingerprint import code_fingerprint


def _scorer(threshold: float):
    def score(example, prediction):
        return prediction.score >= threshold

    return score


def first(a, b):
    return a == b


def second(a, b):
    return a != b


class Judge:
    def __call__(self, example, prediction):
        return True


def test_source_and_captured_values_decide_state_does_not():
    assert code_fingerprint(first) == code_fingerprint(first)
    assert code_fingerprint(first) != code_fingerprint(second)
    assert code_fingerprint(_scorer(0.5)) == code_fingerprint(_scorer(0.5))
    assert code_fingerprint(_scorer(0.5)) != code_fingerprint(_scorer(0.9))
    log: list[str] = []

    def logging_metric(example, prediction):
        log.append("called")
        return True

    before = code_fingerprint(logging_metric)
    log.extend(["x"] * 10)
    assert code_fingerprint(logging_metric) == before


def test_partials_instances_classes_and_builtins():
    assert code_fingerprint(functools.partial(first, b=1)) != code_fingerprint(
        functools.partial(first, b=2)
    )
    assert code_fingerprint(Judge()) == code_fingerprint(Judge())
    assert code_fingerprint(Judge) != code_fingerprint(Judge())
    assert len(code_fingerprint(len)) == 16  # no source: the qualified name stands in
