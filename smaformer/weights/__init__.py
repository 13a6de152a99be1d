"""Pretrained (ImageNet Swin-T) and official-checkpoint weight loading, with coverage reports."""
