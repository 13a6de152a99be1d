"""Data: medical IO, one reader per layout, the sample model and batch loop, preprocessing and augmentation,
synthetic phantoms."""
from smaformer.data.dataset import SliceDataset
from smaformer.data.formats import LAYOUTS, detect_layout, open_dataset
from smaformer.data.io import read_image, write_labels
from smaformer.data.sample import Reader, Sample, iter_cases
from smaformer.data.synthetic import SyntheticReader, make_phantom, make_phantom_2d
from smaformer.data.transforms import CT_WINDOWS, RandomGenerator, seed_worker, window_spec

__all__ = ["SliceDataset", "LAYOUTS", "detect_layout", "open_dataset", "read_image", "write_labels", "Reader",
           "Sample", "iter_cases", "SyntheticReader", "make_phantom", "make_phantom_2d", "CT_WINDOWS",
           "RandomGenerator", "seed_worker", "window_spec"]
