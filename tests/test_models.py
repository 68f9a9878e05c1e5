"""The seed network exactly, LRN as in the paper, input sizes, width, final ReLU."""
from __future__ import annotations

import re

import pytest
import torch

from alexnet.models import ARCHS, LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, build_model, count_parameters, \
    feature_map_size, min_input_size, paper_lrn
from alexnet.data import Loader, synthetic_images
from alexnet.summary import layer_rows

SEED_PARAMS = 46_787_978


def seed_table(shared) -> list[tuple[str, tuple[int, ...], int]]:
    text = (shared / "seed" / "alexnet-cifar10-seed.md").read_text()
    rows = re.findall(r"^\s*(\w+-\d+)\s+\[-1, ([\d, ]+)\]\s+([\d,]+)\s*$", text, flags=re.M)
    return [(name, tuple(int(s) for s in shape.split(",")), int(params.replace(",", ""))) for name, shape, params
            in rows]


def test_seed_table_is_reproduced_exactly(shared):
    expected = seed_table(shared)
    assert len(expected) == 21  # Conv2d-1 ... ReLU-21, parsed from the seed's summary
    model = build_model("alexnet", num_classes=10, input_size=224, final_relu=True)
    rows = [(r.name, r.shape, r.params) for r in layer_rows(model, 224)]
    assert rows == expected
    assert count_parameters(model) == SEED_PARAMS


def test_seed_parameter_count_without_the_final_relu():
    assert count_parameters(build_model("alexnet", num_classes=10)) == SEED_PARAMS


def test_final_relu_only_when_asked():
    size = ARCHS["alexnet"].default_input_size
    x = torch.randn(4, 3, size, size)
    torch.manual_seed(0)
    plain = build_model("alexnet", final_relu=False).eval()
    assert (plain(x) < 0).any()  # real logits can be negative
    torch.manual_seed(0)
    seedlike = build_model("alexnet", final_relu=True).eval()
    assert (seedlike(x) >= 0).all()


def direct_lrn(a: torch.Tensor, n=LRN_SIZE, k=LRN_K, alpha=LRN_ALPHA, beta=LRN_BETA) -> torch.Tensor:
    """Krizhevsky et al. 2012, eq. in section 3.3, written out channel by channel."""
    channels = a.shape[1]
    out = torch.empty_like(a)
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        out[:, i] = a[:, i] / (k + alpha * (a[:, lo:hi + 1] ** 2).sum(1)) ** beta
    return out


def test_lrn_matches_the_paper_formula():
    a = torch.rand(2, 12, 5, 5, dtype=torch.float64) * 30  # large activations, where alpha matters
    expected = direct_lrn(a)
    assert torch.allclose(paper_lrn().double()(a), expected, rtol=1e-12, atol=0)
    naive = torch.nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_K).double()(a)
    assert not torch.allclose(naive, expected, rtol=1e-4)  # torch's alpha is the paper's divided by n


@pytest.mark.parametrize("channels_last", [False, True])
def test_lrn_equals_torchs_forward_and_backward_without_avg_pool3d(channels_last):
    a = (torch.rand(2, 12, 5, 5, dtype=torch.float64) * 30).requires_grad_()
    x = a.to(memory_format=torch.channels_last) if channels_last else a
    ours = paper_lrn().double()(x)
    theirs = torch.nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K).double()(a)
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=0)
    weights = torch.randn_like(theirs)
    (grad_ours,), (grad_theirs,) = (torch.autograd.grad((y * weights).sum(), a) for y in (ours, theirs))
    assert torch.allclose(grad_ours, grad_theirs, rtol=1e-10, atol=1e-14)
    # torch's backward goes through avg_pool3d, which has no deterministic CUDA kernel; ours must not
    assert "AvgPool3DBackward0" in backward_ops(theirs) and not any("Pool" in op for op in backward_ops(ours))


def backward_ops(output: torch.Tensor) -> set[str]:
    """The names of every node in `output`'s autograd graph."""
    visited, names, todo = set(), set(), [output.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in visited:
            visited.add(node)
            names.add(type(node).__name__)
            todo += [next_node for next_node, _ in node.next_functions]
    return names


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lrn_trains_with_deterministic_algorithms_on_cuda(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # as seed_everything sets it
    torch.use_deterministic_algorithms(True)
    try:
        model = build_model("alexnet_cifar", lrn=True, width=0.25).cuda()
        size = ARCHS["alexnet_cifar"].default_input_size
        images = torch.randn(4, 3, size, size, device="cuda")
        torch.nn.functional.cross_entropy(model(images), torch.arange(4, device="cuda")).backward()
        assert all(p.grad is not None for p in model.parameters())
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_lrn_sits_after_the_first_two_conv_blocks(arch):
    layers = [type(m).__name__ for m in build_model(arch, lrn=True, width=0.125).modules()
              if not list(m.children())]
    assert layers[:8] == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d",
                          "Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"]
    assert layers.count("LocalResponseNorm") == 2
    assert "LocalResponseNorm" not in [type(m).__name__ for m in build_model(arch, lrn=False).modules()]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_valid_input_size_runs_and_smaller_fails(arch):
    smallest = min_input_size(ARCHS[arch])
    for size in (smallest, smallest + 1, 2 * smallest + 3, ARCHS[arch].default_input_size):
        model = build_model(arch, input_size=size, width=0.125).eval()
        assert model(torch.randn(2, 3, size, size)).shape == (2, 10)
    with pytest.raises(ValueError, match=f"at least {smallest}"):
        build_model(arch, input_size=smallest - 1)
    # The smallest size really is the smallest: one pixel less breaks the convolutions themselves.
    features = build_model(arch, input_size=smallest, width=0.125).features
    with pytest.raises(RuntimeError, match="too small"):
        features(torch.randn(1, 3, smallest - 1, smallest - 1))


def test_alexnet_cifar_shapes_and_size():
    spec = ARCHS["alexnet_cifar"]
    model = build_model("alexnet_cifar")
    pools = [r.shape for r in layer_rows(model, spec.default_input_size) if r.name.startswith("MaxPool2d")]
    assert pools == [(96, 15, 15), (256, 7, 7), (256, 3, 3)]  # 32 -> 15 -> 7 -> 3, as documented in models.py
    assert pools[-1] == (spec.convs[-1].channels, *[feature_map_size(spec, spec.default_input_size)] * 2)
    assert count_parameters(model) == 12_652_426  # documented in conf/model/alexnet_cifar.yaml and the README


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_width_scales_channels(arch):
    small, full = build_model(arch, width=0.25), build_model(arch)
    assert small.features[0].out_channels == round(full.features[0].out_channels * 0.25) == round(
        ARCHS[arch].convs[0].channels * 0.25)
    assert count_parameters(small) < count_parameters(full) / 8


@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_num_classes_sets_the_output(num_classes):
    size = ARCHS["alexnet_cifar"].default_input_size
    assert build_model("alexnet_cifar", num_classes=num_classes, width=0.125)(torch.randn(1, 3, size, size)).shape == (
        1, num_classes)


def test_dropout_is_configured():
    drops = [m.p for m in build_model("alexnet_cifar", dropout=0.3).modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.3, 0.3]


@pytest.mark.parametrize("arch,channels", [("alexnet", 4), ("alexnet_cifar", 8)])
def test_zero_input_channels_compute_the_same_function(arch, channels):
    torch.manual_seed(0)
    split = synthetic_images(8, 0.3, torch.Generator().manual_seed(0))
    # The smallest input the arch takes, but no smaller than the images: alexnet 67, alexnet_cifar 32.
    size = max(min_input_size(ARCHS[arch]), split.images.shape[-1])
    rgb = build_model(arch, input_size=size, width=0.25, dropout=0.0).eval()
    padded = build_model(arch, input_size=size, width=0.25, dropout=0.0, input_channels=channels).eval()
    first = padded.features[0]
    assert first.weight.shape[1] == channels and first.weight[:, 3:].eq(0).all()
    state = rgb.state_dict()
    state["features.0.weight"] = torch.cat([state["features.0.weight"], first.weight[:, 3:]], 1)
    padded.load_state_dict(state)
    loaders = [Loader(split, 8, size, [0.5] * 3, [0.25] * 3, torch.device("cpu"), channels=c) for c in (3, channels)]
    (x3, _), (xc, _) = (next(iter(loader)) for loader in loaders)
    assert xc.shape[1] == channels and xc[:, 3:].eq(0).all() and torch.allclose(xc[:, :3], x3, atol=1e-6)
    assert torch.allclose(padded(xc), rgb(x3), rtol=1e-5, atol=1e-6)
    loss = torch.nn.functional.cross_entropy(padded(xc), torch.arange(8))
    loss.backward()
    assert first.weight.grad[:, 3:].eq(0).all()  # the zero weights get no gradient and stay zero
    assert count_parameters(padded) - count_parameters(rgb) == first.weight[:, 3:].numel()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_state_dict_keys_name_the_two_stages(arch):
    model = build_model(arch, width=0.125)
    assert isinstance(model, torch.nn.Sequential)
    assert [name for name, _ in model.named_children()] == ["features", "classifier"]
    keys = list(model.state_dict())
    assert keys and all(k.startswith(("features.", "classifier.")) for k in keys)
    convs = [k for k in keys if k.startswith("features.") and k.endswith(".weight")]
    linears = [k for k in keys if k.startswith("classifier.") and k.endswith(".weight")]
    assert convs[0] == "features.0.weight" and len(convs) == len(ARCHS[arch].convs)
    assert linears[0] == "classifier.1.weight" and len(linears) == 3  # after the Flatten: three Linear layers


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("width", [0.1, 0.5, 1.0, 1.3])
def test_the_memory_estimate_counts_the_parameters_the_model_has(arch, width):
    """alexnet.archs.training_bytes works from the specs without building anything; its parameter count is the
    built model's, for every arch, at several widths and input sizes."""
    from alexnet.archs import training_bytes

    spec = ARCHS[arch]
    for size in (min_input_size(spec), spec.default_input_size, 2 * spec.default_input_size):
        params, need = training_bytes(spec, size, width, 10, 64)
        assert params == count_parameters(build_model(arch, 10, size, width=width))
        assert need > 4 * params * 4  # weights, gradients, momentum, best weights: and the activations on top


def test_summary_of_a_huge_width_needs_no_memory(capsys):
    """model.width=16 has 12 billion parameters (48 GB): the table is built on the meta device."""
    from alexnet.summary import main

    main(["model.width=16"])
    assert "Total params: 11,957,229,578" in capsys.readouterr().out
