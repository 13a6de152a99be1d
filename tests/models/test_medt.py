"""MedT family: parameter counts, shapes at 128 and 256, size validation, gate freezing, gradients, conversion."""
from __future__ import annotations

import pytest
import torch

from smaformer.errors import CheckpointError
from smaformer.models import create_model
from smaformer.models.layers.axial import gates_trainable, relative_index, set_gates_trainable
from smaformer.models.registry import tiny_kwargs
from smaformer.weights import load_official

NAMES = ("axial_unet", "gated_axial_unet", "logo", "medt")
# Official counts at 128x128, 2 classes: (default build, compatibility build with the unused parameters).
COUNTS = {"axial_unet": (1_326_850, 1_326_850), "gated_axial_unet": (1_326_914, 1_326_914),
          "logo": (1_529_498, 1_529_532), "medt": (1_524_570, 1_560_140)}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny(name: str, **kw) -> torch.nn.Module:
    return create_model(name, **{**tiny_kwargs(name), **kw})


@pytest.mark.parametrize("name", NAMES)
def test_param_counts(name):
    default, compat = COUNTS[name]
    assert n_params(create_model(name, num_classes=2, img_size=128)) == default
    if compat != default:
        assert n_params(create_model(name, num_classes=2, img_size=128, compat=True)) == compat
    assert n_params(tiny(name)) < 1_000_000


@pytest.mark.parametrize(("name", "size"), [(n, 128) for n in NAMES] + [
    ("gated_axial_unet", 256), ("medt", 256), ("axial_unet", (96, 160)), ("logo", (128, 192))])
def test_shapes(name, size):
    """Sizes other than the official 128 run, with free num_classes/in_chans (tiny widths keep it cheap)."""
    model = tiny(name, img_size=size, num_classes=3, in_chans=1).eval()
    hw = (size, size) if isinstance(size, int) else size
    with torch.no_grad():
        assert model(torch.randn(1, 1, *hw)).shape == (1, 3, *hw)


def test_full_size_logo_shape():
    """LoGo has no golden; run the full-size model once at the official size."""
    with torch.no_grad():
        assert create_model("logo").eval()(torch.randn(1, 3, 128, 128)).shape == (1, 2, 128, 128)


@pytest.mark.parametrize(("name", "size", "hint"), [
    ("axial_unet", 250, "256"), ("gated_axial_unet", 16, "32"),
    ("medt", 96, "128"), ("logo", (128, 176), "\\(128, 192\\)")])
def test_sizes_that_cannot_work_fail_at_construction(name, size, hint):
    with pytest.raises(ValueError, match=rf"img_size .* is not divisible by .*; use {hint}"):
        create_model(name, img_size=size)


def test_bad_width_and_wrong_input_size():
    with pytest.raises(ValueError, match="multiple of 2\\*groups"):
        create_model("medt", s=0.1)
    model = tiny("axial_unet")
    with pytest.raises(ValueError, match="built for img_size"):
        model(torch.randn(1, 3, 128, 128))


def test_relative_index_matches_official_formula():
    k = 5
    idx = relative_index(k).view(k, k)
    assert idx[0, 0] == k - 1 and idx[k - 1, 0] == 2 * k - 2 and idx[0, k - 1] == 0


def test_gate_api():
    model = tiny("gated_axial_unet")
    assert model.gates_trainable is True  # the default build trains everything
    assert set_gates_trainable(model, False) == 4 * 2 * (1 + 2 + 4 + 1)  # 4 gates, 2 attentions, 8 blocks
    assert model.gates_trainable is False and gates_trainable(model) is False
    model.gates_trainable = True
    assert all(p.requires_grad for p in model.parameters())
    plain = tiny("axial_unet")
    assert set_gates_trainable(plain, False) == 0 and plain.gates_trainable is None


def test_gates_frozen_for_first_epochs_then_train():
    """The training option freezes the gates for N epochs: they stay put while the rest trains, then move."""
    torch.manual_seed(0)
    model = tiny("medt").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)  # built over all parameters, frozen ones included
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64))
    freeze_epochs = 1
    for epoch in range(2):
        set_gates_trainable(model, epoch >= freeze_epochs)
        gates = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith((".f_qr", ".f_sve"))}
        other = model.decoderf.weight.detach().clone()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        moved = [not torch.equal(p, gates[n]) for n, p in model.named_parameters() if n in gates]
        assert len(moved) == 2 * 2 * 3  # two gates in both attentions of the 3 gated global blocks
        assert all(moved) == (epoch >= freeze_epochs) and any(moved) == (epoch >= freeze_epochs)
        assert not torch.equal(model.decoderf.weight, other)


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name):
    """The default build has no dead parameters."""
    model = tiny(name).train()
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_compat_build_adds_exactly_the_unused_official_parameters():
    model = tiny("medt", compat=True).train()
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    dead = {n for n, p in model.named_parameters() if p.grad is None}
    blocks = [f"layer{i + 1}_p.{j}" for i, n in enumerate((1, 2, 4, 1)) for j in range(n)]
    assert dead == {f"{b}.conv1.{t}" for b in blocks for t in ("weight", "bias")} | {"adjust_p.weight", "adjust_p.bias"}


def _as_official(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k.replace(".height_block.", ".hight_block."): v for k, v in model.state_dict().items()}


def test_convert_round_trip_and_errors():
    src = tiny("medt", compat=True)
    dst = load_official(tiny("medt"), _as_official(src))
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())
    with pytest.raises(CheckpointError, match=r"trained at img_size \(64, 64\); build the model with img_size"):
        load_official(tiny("medt", img_size=128), _as_official(src))
    unet = tiny("gated_axial_unet")
    with pytest.raises(CheckpointError, match="cannot place"):
        load_official(unet, {**_as_official(unet), "extra.weight": src.adjust.weight})


@pytest.mark.parametrize("name", ["gated_axial_unet", "medt", "logo"])
def test_training_path_matches_eval_path(name):
    """Training runs the official op order (BatchNorm over stacked logits); eval folds those BatchNorms. With the
    BatchNorms in eval mode both must agree, which ties the training path to the golden-checked eval path."""
    from smaformer.models.layers.axial import AxialAttention

    torch.manual_seed(0)
    model = tiny(name).eval()
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point() and t.dim() <= 1:  # non-trivial BN statistics, affine terms and gates
                t.copy_(torch.rand_like(t) + 0.5 if key.endswith("running_var") else t + 0.3 * torch.randn_like(t))
        x = torch.randn(2, 3, 64, 64)
        folded = model(x)
        for m in model.modules():
            if isinstance(m, AxialAttention):
                m.training = True  # its BatchNorms stay in eval mode
        torch.testing.assert_close(model(x), folded, rtol=1e-5, atol=1e-5 * folded.abs().max().item())
