"""The engine loop, the model runner and the sampler."""
from mistralrs.engine.engine import ChoiceOutput, Delta, Engine, RequestHandle, RequestOutput
from mistralrs.engine.params import SamplingParams

__all__ = ["ChoiceOutput", "Delta", "Engine", "RequestHandle", "RequestOutput", "SamplingParams"]
