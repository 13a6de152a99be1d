"""Inference: volume inference (the one slice protocol), post-processing, prediction on real scans, and
evaluation with its report. Never imports ``smaformer.train``; training scores validation through here."""
from smaformer.infer.evaluate import evaluate, validate_volumes, volume_dice
from smaformer.infer.postprocess import postprocess_labels
from smaformer.infer.predict import predict
from smaformer.infer.volume import infer_volume

__all__ = ["evaluate", "infer_volume", "postprocess_labels", "predict", "validate_volumes", "volume_dice"]
