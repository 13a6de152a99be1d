"""data.sample.stack_volume: the one regrouping of slice cases into volumes (validation, INT8 calibration)."""
import numpy as np
import pytest

from smaformer.data.sample import Sample, SampleList, stack_volume
from smaformer.errors import InputError


def _slices(channels: int, sizes=((6, 5),) * 3) -> SampleList:
    rng = np.random.default_rng(0)
    return SampleList([Sample(rng.random((channels, *hw)).astype(np.float32), rng.integers(0, 3, hw),
                              {"case": f"p001_frame01_slice_{i}"}) for i, hw in enumerate(sizes)], split="train")


def test_slices_in_slice_order_with_every_channel():
    reader = _slices(3)
    names = ["p001_frame01_slice_2", "p001_frame01_slice_0", "p001_frame01_slice_1"]
    v = stack_volume(reader, names)
    assert v.case == "p001_frame01" and v.is_volume and v.image.shape == (3, 3, 6, 5) and v.label.shape == (3, 6, 5)
    for i in range(3):
        np.testing.assert_array_equal(v.image[i], reader.load_case(f"p001_frame01_slice_{i}").image)
    assert stack_volume(_slices(1), names).image.shape == (3, 6, 5)          # one channel: (D,H,W)


def test_slices_of_different_sizes_are_refused():
    reader = _slices(1, ((6, 5), (6, 5), (7, 5)))
    with pytest.raises(InputError, match="the slices of p001_frame01 differ in size"):
        stack_volume(reader, reader.cases())
