"""The torchvision families: built at tiny widths for 32x32 (and other) inputs, drawn like the small
families, their parameters classified, and the coordinate sample a sampled run records."""
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torchvision

from invwnn.inputs.archs import param_kinds
from trajgen import nets, store
from trajgen.spec import (ARCHS, NATIVE_ACTIVATION, TORCHVISION_ARCHS, ArchSpec, RunSpec, SpecError, draw_run,
                          make_arch)

TINY = {"resnet18": 4, "mobilenet_v2": 4, "mobilenet_v3_small": 4, "convnext": 8, "vit_tv": 8}


def tiny(family: str) -> ArchSpec:
    return make_arch(family, TINY[family], 1, "relu")


@pytest.mark.parametrize("family", TORCHVISION_ARCHS)
def test_builds_for_rgb32_and_grey28_inputs(family):
    torch.manual_seed(0)
    for shape in ((3, 32, 32), (1, 28, 28)):
        model = nets.build(tiny(family), shape, 10, "kaiming")
        model.eval()
        out = model(torch.rand(2, *shape))
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        table = nets.layer_table(model)
        assert sum(layer.numel for layer in table) == sum(p.numel() for p in model.parameters())
        assert {layer.kind for layer in table} <= set(nets.KINDS)


def test_width_multiplier_scales_the_nets():
    small = nets.n_params(nets.build(make_arch("resnet18", 8, 0, ""), (3, 32, 32), 10))
    big = nets.n_params(nets.build(make_arch("resnet18", 16, 0, ""), (3, 32, 32), 10))
    assert 3.5 < big / small < 4.1  # conv kernels grow with the square of the width


def test_resnet18_is_the_cifar_variant_with_torchvision_names():
    model = nets.build(make_arch("resnet18", 8, 0, ""), (3, 32, 32), 10)
    kinds = {layer.name: layer.kind for layer in nets.layer_table(model)}
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert kinds["conv1.weight"] == "conv" and kinds["bn1.weight"] == "norm" and kinds["bn1.bias"] == "norm"
    assert kinds["layer2.0.downsample.0.weight"] == "conv" and kinds["layer4.1.conv2.weight"] == "conv"
    assert kinds["fc.weight"] == "linear" and kinds["fc.bias"] == "bias"
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 20  # 17 + 3 shortcuts


def test_kinds_of_depthwise_pointwise_squeeze_excitation_and_layer_scale():
    v3 = nets.build(tiny("mobilenet_v3_small"), (3, 32, 32), 10)
    kinds = {layer.name: layer.kind for layer in nets.layer_table(v3)}
    convs = dict(v3.named_modules())
    depthwise = [n for n, m in convs.items() if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels]
    pointwise = [n for n, m in convs.items() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)
                 and ".fc" not in n]
    se = [n for n, m in convs.items() if type(m).__name__ == "SqueezeExcitation"]
    assert depthwise and pointwise and se
    assert all(kinds[f"{n}.weight"] == "conv" for n in depthwise + pointwise)
    assert all(kinds[f"{n}.fc1.weight"] == "linear" and kinds[f"{n}.fc2.weight"] == "linear" for n in se)
    assert all(kinds[f"{n}.fc1.bias"] == "bias" for n in se)
    cn = nets.build(tiny("convnext"), (3, 32, 32), 10)
    kinds = {layer.name: layer.kind for layer in nets.layer_table(cn)}
    scales = [n for n in kinds if n.endswith("layer_scale")]
    assert scales and all(kinds[n] == "norm" for n in scales)
    assert kinds["features.1.0.block.0.weight"] == "conv"  # the depthwise 7x7
    assert kinds["features.1.0.block.0.bias"] == "bias"
    assert kinds["features.1.0.block.3.weight"] == "linear"  # the inverted MLP
    assert kinds["features.1.0.block.2.weight"] == "norm"


def test_vit_tv_is_torchvisions_vision_transformer_with_its_parameters_classified():
    arch = make_arch("vit_tv", 192, 2, "relu")
    assert (arch.activation, arch.heads, arch.patch) == ("gelu", 3, 4)  # ViT-Ti's head size, 8x8 patches
    assert ArchSpec(**asdict(arch)) == arch  # the spec records what is built
    model = nets.build(arch, (3, 32, 32), 10)
    assert isinstance(model, torchvision.models.VisionTransformer)
    assert model.encoder.pos_embedding.shape == (1, 65, 192) and len(model.encoder.layers) == 2
    kinds = {layer.name: layer.kind for layer in nets.layer_table(model)}
    block = "encoder.layers.encoder_layer_0"
    assert kinds["conv_proj.weight"] == "conv" and kinds["conv_proj.bias"] == "bias"  # the patch projection
    assert kinds["class_token"] == "embedding" and kinds["encoder.pos_embedding"] == "embedding"
    assert kinds[f"{block}.self_attention.in_proj_weight"] == "attention"
    assert kinds[f"{block}.self_attention.in_proj_bias"] == "bias"
    assert kinds[f"{block}.self_attention.out_proj.weight"] == "linear"
    assert kinds[f"{block}.ln_1.weight"] == "norm" and kinds[f"{block}.ln_2.bias"] == "norm"
    assert kinds[f"{block}.mlp.0.weight"] == "linear" and kinds[f"{block}.mlp.3.bias"] == "bias"
    assert kinds["heads.head.weight"] == "linear" and kinds["encoder.ln.weight"] == "norm"
    assert param_kinds(model) == kinds
    grey = nets.build(make_arch("vit_tv", 16, 1, ""), (1, 28, 28), 10)  # 7x7 patches of 4
    assert grey.conv_proj.in_channels == 1 and grey(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_mobilenet_v3_batch_norms_average_at_torchs_default_momentum():
    model = nets.build(tiny("mobilenet_v3_small"), (3, 32, 32), 10)
    assert {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}


def test_drawn_specs_are_deterministic_and_round_trip():
    specs = [draw_run(3, i, TORCHVISION_ARCHS, coords=500) for i in range(8)]
    assert specs == [draw_run(3, i, TORCHVISION_ARCHS, coords=500) for i in range(8)]
    assert {s.arch.family for s in specs} == set(TORCHVISION_ARCHS)
    for s in specs:
        assert RunSpec.from_json(s.to_json()) == s and s.coords == 500
        assert s.arch.activation == NATIVE_ACTIVATION[s.arch.family]
    fixed = draw_run(3, 0, ("resnet18",), width_mult=0.25)
    assert fixed.arch.width == 16
    # the small families' draws do not change, and an unsampled spec's JSON has no coords field
    assert draw_run(0, 5, ARCHS) == draw_run(0, 5)
    assert "coords" not in draw_run(0, 5).to_dict()


def test_bad_torchvision_specs_are_refused():
    with pytest.raises(SpecError, match="own activation"):
        ArchSpec("resnet18", 8, 0, "tanh")
    with pytest.raises(SpecError, match="depth 0"):
        ArchSpec("mobilenet_v2", 8, 2, "relu6")
    with pytest.raises(SpecError, match="blocks per stage"):
        ArchSpec("convnext", 8, 0, "gelu")
    with pytest.raises(SpecError, match="encoder layers"):
        ArchSpec("vit_tv", 64, 0, "gelu")
    with pytest.raises(SpecError, match="divisible"):
        ArchSpec("vit_tv", 100, 1, "gelu", heads=3)
    with pytest.raises(SpecError, match="width multiplier"):
        draw_run(0, 0, ("resnet18",), width_mult=0.0)


def test_coordinate_sample_is_seeded_stratified_and_exact():
    table = nets.layer_table(nets.build(make_arch("resnet18", 8, 0, ""), (3, 32, 32), 10))
    total = sum(layer.numel for layer in table)
    a = nets.sample_coords(table, 5000, seed=7)
    assert np.array_equal(a, nets.sample_coords(table, 5000, seed=7))
    assert not np.array_equal(a, nets.sample_coords(table, 5000, seed=8))
    assert len(a) == 5000 and a.dtype == np.int64 and (np.diff(a) > 0).all() and 0 <= a[0] and a[-1] < total
    per = store.coordinate_arrays(table, a)
    # every layer and every kind is represented; small kinds get far more than their share of weights
    assert set(per["layer"].tolist()) == set(range(len(table)))
    norm_share = sum(l.numel for l in table if l.kind == "norm") / total
    assert (per["kind"] == nets.KINDS.index("norm")).mean() > 2 * norm_share
    assert np.array_equal(nets.sample_coords(table, total + 5, seed=0), np.arange(total))
