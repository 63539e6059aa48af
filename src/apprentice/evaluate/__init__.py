from apprentice.evaluate.evaluate import Evaluate, EvaluationError, EvaluationResult, ExampleResult
from apprentice.evaluate.report import (
    PredictorStats,
    SystemEval,
    evaluate_system,
    headline,
    write_report,
)

__all__ = [
    "Evaluate",
    "EvaluationError",
    "EvaluationResult",
    "ExampleResult",
    "PredictorStats",
    "SystemEval",
    "evaluate_system",
    "headline",
    "write_report",
]
