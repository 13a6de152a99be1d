"""Golden parity of the MedT family with the official axialnet.py @62f40a5 (eval mode, 128x128, 2 classes).

The official-named state dict is built from ``keys.json`` with the golden weights procedure (A or B, see
``../shared/golden/README.md``) and loaded with ``load_official``, so the key conversion is tested too. A (the
main golden) is checked with an absolute threshold, since its outputs are tiny and barely depend on the input;
B has strong signal and validates the attention itself at 1e-5 relative.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from golden_weights import BUFFERS, golden_state_dict

from smaformer.models import create_model
from smaformer.models.layers.axial import relative_index
from smaformer.weights import load_official

CASES = {"gated_axial_unet": "medt_gated_axial_unet", "axial_unet": "medt_axialunet", "medt": "medt"}


def official_state_dict(keys: list, proc: str) -> dict[str, torch.Tensor]:
    """The official state dict by the golden weights procedure, with buffers as the official code has them."""
    out = golden_state_dict(keys, proc)
    for name, shape, dtype, _ in keys:
        if name.endswith(BUFFERS):
            out[name] = (relative_index(math.isqrt(shape[0])) if name.endswith("flatten_index")
                         else torch.zeros(shape, dtype=getattr(torch, dtype)))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_golden_parity(name, golden_dir):
    """A and B outputs match. MedT runs A in the compatibility build and B in the default build (unused official
    parameters dropped by the conversion), so both builds are shown to load official checkpoints."""
    folder = golden_dir / CASES[name]
    keys = json.loads((folder / "keys.json").read_text(encoding="utf-8"))
    x = torch.from_numpy(np.load(folder / "input.npy"))
    for proc, compat in (("A", name == "medt"), ("B", False)):
        model = create_model(name, num_classes=2, in_chans=3, img_size=128, **({"compat": True} if compat else {}))
        load_official(model.eval(), official_state_dict(keys, proc))
        with torch.no_grad():
            y = model(x).numpy()
        ref = np.load(folder / "output.npy" if proc == "A" else folder / "procedure_B" / "output.npy")
        err = float(np.abs(y - ref).max())
        if proc == "A":
            assert err <= 1e-7, f"{name} procedure A: max|diff| {err:.3g} (> 1e-7 absolute)"
        else:
            rel = err / float(np.abs(ref).max())
            assert rel <= 1e-5, f"{name} procedure B: max|diff|/max|ref| {rel:.3g} (> 1e-5)"
