"""Training: the loop (AMP, accumulation, exact resume, DDP), data assembly with leak checks, sampling,
schedules, the run log and the plan of a run. Validation volumes are scored through ``smaformer.infer``."""
from smaformer.train.loop import Trainer, TrainResult, train, trainer_session
from smaformer.train.plan import describe

__all__ = ["TrainResult", "Trainer", "describe", "train", "trainer_session"]
