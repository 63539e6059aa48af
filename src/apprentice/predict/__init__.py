from apprentice.predict.chain_of_thought import ChainOfThought
from apprentice.predict.multi_chain import MultiChainComparison
from apprentice.predict.predict import Predict, StepRecord
from apprentice.predict.react import ReAct, Tool

__all__ = ["ChainOfThought", "MultiChainComparison", "Predict", "ReAct", "StepRecord", "Tool"]
