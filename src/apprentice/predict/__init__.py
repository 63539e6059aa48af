from apprentice.predict.chain_of_thought import ChainOfThought
from apprentice.predict.predict import Predict, StepRecord
from apprentice.predict.program_of_thought import ProgramOfThought

__all__ = ["ChainOfThought", "Predict", "StepRecord"]
__all__ += ["ProgramOfThought"]
