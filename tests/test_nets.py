import pytest
import torch
from torch import nn

from trajgen import nets
from trajgen.spec import ArchSpec, draw_run


@pytest.mark.parametrize("index", range(9))
def test_drawn_architectures_build_and_classify(index):
    spec = draw_run(0, index)
    model = nets.build(spec.arch, (1, 28, 28), 10, spec.init)
    out = model(torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 10) and torch.isfinite(out).all()
    table = nets.layer_table(model)
    assert sum(layer.numel for layer in table) == sum(p.numel() for p in model.parameters())
    assert [layer.offset for layer in table] == [sum(l.numel for l in table[:i]) for i in range(len(table))]


def test_kinds_of_every_parameter_family():
    vit = nets.build(ArchSpec("vit", 16, 1, "gelu", heads=2, patch=7))
    kinds = {layer.name: layer.kind for layer in nets.layer_table(vit)}
    assert kinds["embed.weight"] == "linear" and kinds["embed.bias"] == "bias"
    assert kinds["cls"] == "embedding" and kinds["pos"] == "embedding"
    assert kinds["blocks.0.attn.in_proj_weight"] == "attention"
    assert kinds["blocks.0.attn.in_proj_bias"] == "bias"
    assert kinds["blocks.0.attn.out_proj.weight"] == "linear"
    assert kinds["blocks.0.norm1.weight"] == "norm" and kinds["norm.bias"] == "norm"
    cnn = nets.build(ArchSpec("cnn", 8, 2, "relu"))
    kinds = [layer.kind for layer in nets.layer_table(cnn)]
    assert kinds == ["conv", "bias", "norm", "norm", "conv", "bias", "norm", "norm", "linear", "bias"]


def test_layer_table_works_on_foreign_models_and_skips_frozen_parameters():
    model = nn.Sequential(nn.Embedding(5, 3), nn.Conv1d(3, 4, 2), nn.GroupNorm(2, 4))
    model[1].bias.requires_grad_(False)
    table = nets.layer_table(model)
    assert [(l.name, l.kind) for l in table] == [
        ("0.weight", "embedding"), ("1.weight", "conv"), ("2.weight", "norm"), ("2.bias", "norm")]


def test_flat_weights_round_trip():
    model = nets.build(ArchSpec("cnn", 8, 2, "relu"))
    flat = nets.flat_weights(model)
    other = nets.build(ArchSpec("cnn", 8, 2, "relu"))
    assert not torch.equal(nets.flat_weights(other), flat)
    nets.load_flat_weights(other, flat)
    assert torch.equal(nets.flat_weights(other), flat)
    x = torch.rand(3, 1, 28, 28)
    model.eval(), other.eval()
    assert torch.equal(model(x), other(x))


@pytest.mark.parametrize("init", ["kaiming", "xavier", "orthogonal"])
def test_init_changes_kernels_and_zeroes_biases(init):
    torch.manual_seed(0)
    default = nets.build(ArchSpec("mlp", 16, 1, "relu"))
    torch.manual_seed(0)
    custom = nets.build(ArchSpec("mlp", 16, 1, "relu"), init=init)
    assert not torch.equal(default[1].weight, custom[1].weight)
    assert torch.count_nonzero(custom[1].bias) == 0
