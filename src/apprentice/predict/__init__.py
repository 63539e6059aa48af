from apprentice.predict.chain_of_thought import ChainOfThought
from apprentice.predict.predict import Predict, StepRecord

__all__ = ["ChainOfThought", "Predict", "StepRecord"]
