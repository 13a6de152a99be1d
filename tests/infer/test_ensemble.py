"""Ensembles, test-time mirroring and sliding-window inference (``infer_ensemble``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from smaformer.checkpoint import default_preprocessing
from smaformer.infer.volume import infer_ensemble, infer_volume


def _volume(shape=(3, 40, 52), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), (0, 2, 2)).astype(np.float32)


def _pointwise(k: int = 3, seed: int = 0) -> torch.nn.Module:
    """A 1x1 convolution: flip-equivariant and independent of its neighbourhood."""
    torch.manual_seed(seed)
    return torch.nn.Conv2d(1, k, 1)


def _conv(k: int = 3, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, k, 3, padding=1))


def test_tta_on_a_flip_equivariant_model_equals_the_plain_result():
    vol, pp = _volume(), default_preprocessing((32, 32), 1, "repeat", {"mode": "minmax"})
    plain, p_plain = infer_volume(_pointwise(), vol, pp, return_probabilities=True)
    tta, p_tta = infer_volume(_pointwise(), vol, pp, return_probabilities=True, tta=True)
    assert np.array_equal(plain, tta)
    assert np.abs(p_plain.astype(np.float32) - p_tta.astype(np.float32)).max() < 2e-3


def test_tta_changes_a_model_that_is_not_flip_equivariant():
    vol, pp = _volume(), default_preprocessing((32, 32), 1, "repeat", {"mode": "minmax"})
    _, p_plain = infer_volume(_conv(), vol, pp, return_probabilities=True)
    _, p_tta = infer_volume(_conv(), vol, pp, return_probabilities=True, tta=True)
    assert np.abs(p_plain.astype(np.float32) - p_tta.astype(np.float32)).max() > 1e-3


def test_an_ensemble_of_a_model_with_itself_equals_the_model():
    vol, pp, net = _volume(), default_preprocessing((32, 32), 1, "repeat", {"mode": "zscore"}), _conv()
    alone, p_alone = infer_volume(net, vol, pp, return_probabilities=True)
    both, p_both = infer_ensemble([(net, pp), (net, pp)], vol, return_probabilities=True)
    assert np.array_equal(alone, both)
    assert np.array_equal(p_alone, p_both)


def test_ensemble_members_keep_their_own_input_size_and_intensity():
    vol = _volume()
    a, pa = _conv(seed=1), default_preprocessing((32, 32), 1, "repeat", {"mode": "minmax"})
    b, pb = _conv(seed=2), default_preprocessing((48, 40), 1, "repeat", {"mode": "zscore"})
    _, p_a = infer_volume(a, vol, pa, return_probabilities=True)
    _, p_b = infer_volume(b, vol, pb, return_probabilities=True)
    labels, p_ab = infer_ensemble([(a, pa), (b, pb)], vol, return_probabilities=True)
    mean = (p_a.astype(np.float32) + p_b.astype(np.float32)) / 2
    assert p_ab.shape == (3, *vol.shape)
    assert np.abs(p_ab.astype(np.float32) - mean).max() < 2e-3
    assert (labels == mean.argmax(0)).mean() > 0.99     # float16 storage may flip exact ties


def test_ensemble_members_with_different_classes_are_refused():
    vol, pp = _volume(), default_preprocessing((32, 32), 1, "repeat", {"mode": "none"})
    with pytest.raises(ValueError, match="classes"):
        infer_ensemble([(_conv(3), pp), (_conv(4), pp)], vol)


def test_sliding_on_an_image_of_exactly_the_model_size_equals_resize():
    vol, pp = _volume((2, 32, 32)), default_preprocessing((32, 32), 1, "repeat", {"mode": "minmax"})
    net = _conv()
    lab_r, p_r = infer_volume(net, vol, pp, return_probabilities=True, inference="resize")
    lab_s, p_s = infer_volume(net, vol, pp, return_probabilities=True, inference="sliding")
    assert np.array_equal(lab_r, lab_s)
    assert np.abs(p_r.astype(np.float32) - p_s.astype(np.float32)).max() < 1e-3


def test_sliding_runs_at_native_resolution_with_padding_and_blending():
    """A pointwise model slid over a larger (and, in one axis, smaller) image equals the model applied to
    the whole image at its own resolution: the Gaussian weights blend identical values."""
    vol, net = _volume((2, 70, 20)), _pointwise()
    pp = default_preprocessing((32, 32), 1, "repeat", {"mode": "none"})
    labels, probs = infer_volume(net, vol, pp, return_probabilities=True, inference="sliding")
    with torch.no_grad():
        direct = net(torch.from_numpy(vol)[:, None]).softmax(1).numpy().transpose(1, 0, 2, 3)
    assert labels.shape == vol.shape
    assert np.abs(probs.astype(np.float32) - direct).max() < 2e-3
    assert np.array_equal(labels, direct.argmax(0))


def test_checkpoint_preprocessing_chooses_the_default_mode():
    vol, net = _volume((1, 70, 20)), _pointwise()
    pp = {**default_preprocessing((32, 32), 1, "repeat", {"mode": "none"}), "inference": "sliding"}
    _, by_checkpoint = infer_volume(net, vol, pp, return_probabilities=True)
    _, sliding = infer_volume(net, vol, pp, return_probabilities=True, inference="sliding")
    _, resized = infer_volume(net, vol, pp, return_probabilities=True, inference="resize")
    assert np.array_equal(by_checkpoint, sliding)
    assert not np.array_equal(by_checkpoint, resized)
    with pytest.raises(ValueError, match="inference mode"):
        infer_volume(net, vol, pp, inference="tiles")


def test_legacy_resize_refuses_what_the_official_script_cannot_do():
    vol, pp, net = _volume(), default_preprocessing((32, 32), 1, "repeat", {"mode": "none"}), _conv()
    for kwargs in ({"tta": True}, {"inference": "sliding"}):
        with pytest.raises(ValueError, match="legacy_resize"):
            infer_volume(net, vol, pp, legacy_resize=True, **kwargs)
    with pytest.raises(ValueError, match="legacy_resize"):      # a checkpoint trained on crops slides
        infer_volume(net, vol, {**pp, "inference": "sliding"}, legacy_resize=True)
