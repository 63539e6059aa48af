from apprentice.predict.chain_of_thought import ChainOfThought
from apprentice.predict.multi_chain import MultiChainComparison
from apprentice.predict.predict import Predict, StepRecord
from apprentice.predict.program_of_thought import ProgramOfThought
from apprentice.predict.react import ReAct, Tool

__all__ = [
    "ChainOfThought",
    "MultiChainComparison",
    "Predict",
    "ProgramOfThought",
    "ReAct",
    "StepRecord",
    "Tool",
]
