"""Data: medical IO, one reader per layout, preprocessing and augmentation, converter, synthetic phantoms."""
