"""Pretrained (ImageNet Swin-T) and official-checkpoint weight loading, with coverage reports."""
from smaformer.weights.official import load_official, read_state_dict

__all__ = ["load_official", "read_state_dict"]
