from apprentice.evaluate.evaluate import Evaluate, EvaluationError, EvaluationResult, ExampleResult

__all__ = ["Evaluate", "EvaluationError", "EvaluationResult", "ExampleResult"]
