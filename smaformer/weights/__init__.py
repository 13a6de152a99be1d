"""Pretrained (ImageNet Swin-T) and official-checkpoint weight loading, with coverage reports."""
from smaformer.weights.coverage import CoverageReport
from smaformer.weights.official import load_official, read_state_dict
from smaformer.weights.pretrained import load_pretrained

__all__ = ["CoverageReport", "load_official", "load_pretrained", "read_state_dict"]
