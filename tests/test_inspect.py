"""`convlab inspect` and `conv-cost`: counts worked by hand, invariants, agreement with
torch.utils.flop_counter and torchvision, the comparison, and the errors."""
from __future__ import annotations

import csv
import io
import json
import re

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convlab.analysis import layer_stats, model_stats, parse_input
from convlab.analysis.conv_cost import bottleneck_costs, conv_cost, separable_costs
from convlab.cli import main
from convlab.errors import ConfigError
from convlab.models import create_model

from conftest import GOLDEN


def _only(stats, kind):
    rows = [r for r in stats.layers if r.kind == kind]
    assert len(rows) == 1
    return rows[0]


def test_one_conv_layer_by_hand():
    # M=3 input channels, N=8 kernels of K=5, 'same' padding on a 28x28 map
    stats = layer_stats(nn.Sequential(nn.Conv2d(3, 8, 5, padding=2)), (3, 28, 28))
    r = _only(stats, "conv")
    assert r.out_shape == (8, 28, 28)
    assert r.units == 28 * 28 * 8                       # W*H*N = 6,272
    assert r.connections == 28 * 28 * 5 * 5 * 3 * 8     # W*H*K*K*M*N = 470,400
    assert r.weights == 5 * 5 * 3 * 8 and r.biases == 8
    assert r.macs == r.connections


def test_depthwise_grouped_and_strided_convs_by_hand():
    dw = _only(layer_stats(nn.Conv2d(16, 16, 3, padding=1, groups=16), (16, 10, 10)), "conv")
    assert dw.type == "Conv2d dw"
    assert dw.connections == 10 * 10 * 3 * 3 * 16 * 16 // 16 == 14_400
    assert dw.weights == 3 * 3 * 16
    g = _only(layer_stats(nn.Conv2d(8, 12, 3, groups=4, bias=False), (8, 9, 9)), "conv")
    assert g.type == "Conv2d g=4" and g.out_shape == (12, 7, 7)
    assert g.connections == 7 * 7 * 3 * 3 * 8 * 12 // 4 and g.weights == 3 * 3 * 8 * 12 // 4
    assert g.biases == 0
    s = _only(layer_stats(nn.Conv2d(1, 4, 3, stride=2), (1, 11, 11)), "conv")
    assert s.units == 5 * 5 * 4 and s.connections == 5 * 5 * 3 * 3 * 1 * 4


def test_linear_pool_and_norm_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 7))
    stats = layer_stats(model, (1, 6, 6))
    pool, lin, bn = _only(stats, "pool"), _only(stats, "linear"), _only(stats, "norm")
    assert pool.units == 4 * 3 * 3 and pool.connections == 4 * 3 * 3 * 2 * 2 and pool.macs == 0
    assert lin.units == 7 and lin.connections == lin.macs == 36 * 7          # M*N
    assert lin.weights == 36 * 7 and lin.biases == 7
    assert bn.units == 0 and bn.weights == 4 and bn.biases == 4
    assert stats.params == sum(p.numel() for p in model.parameters())
    assert stats.depth == 2


def test_mnist_cnn_the_lectures_numbers():
    s = model_stats("mnist_cnn")
    conv = _only(s, "conv")
    assert conv.weights + conv.biases == 5 * 5 * 1 * 32 + 32
    assert conv.units == 28 * 28 * 32 and conv.connections == 28 * 28 * 5 * 5 * 32
    assert s.params == 63_626
    assert s.total("units") == 28 * 28 * 32 + 14 * 14 * 32 + 10
    assert s.total("connections") == 28 * 28 * 25 * 32 + 14 * 14 * 32 * 4 + 14 * 14 * 32 * 10


def test_alexnet_shares_and_published_count():
    s = model_stats("alexnet")
    assert s.params == 61_100_840 and s.input_shape == (3, 224, 224) and s.output_shape == (1000,)
    sh = s.shares()
    assert sh["linear"]["params"] > 0.9            # weights: mostly the fully connected layers
    assert sh["conv"]["connections"] > 0.9         # connections: mostly the conv layers
    assert sh["conv"]["units"] > 0.8               # units: mostly the conv layers
    assert sum(v["params"] for v in sh.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["alexnet", "resnet18", "googlenet", "mobilenet_v3_small",
                                  "squeezenet1_1", "efficientnet_lite0", "tiny_yolo_face",
                                  "lenet5", "mnist_mlp"])
def test_macs_agree_with_torch_flop_counter(name):
    s = model_stats(name, num_classes=10)
    with torch.device("meta"):
        model = create_model(name, 10).eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.empty(1, *s.input_shape, device="meta"))
    assert s.macs == pytest.approx(counter.get_total_flops() / 2, rel=0.01)
    assert s.flops == 2 * s.macs
    assert s.params == sum(p.numel() for p in model.parameters())


def test_timm_norm_act_layers_count_as_norm():
    s = model_stats("efficientnet_lite0")
    bn1 = next(r for r in s.layers if r.name == "bn1")
    assert bn1.type == "BatchNormAct2d" and bn1.kind == "norm" and bn1.weights == bn1.biases == 32
    assert not any(r.params for r in s.layers if r.kind == "other")
    assert next(r for r in s.layers if r.name == "blocks.0.0.conv_dw").type == "Conv2d dw"


def test_depth_is_the_longest_chain_of_weight_layers():
    assert model_stats("alexnet").depth == 8
    assert model_stats("vgg16").depth == 16
    assert model_stats("resnet50").depth == 50      # the residual shortcut is not the longest
    assert model_stats("densenet121").depth == 121  # dense concatenations followed


def test_grouping_by_depth_keeps_totals():
    s = model_stats("resnet18")
    blocks = s.grouped(1)
    assert [r.name for r in blocks][:4] == ["conv1", "bn1", "relu", "maxpool"]
    layer1 = next(r for r in blocks if r.name == "layer1")
    assert layer1.out_shape == (64, 56, 56) and layer1.type == "Sequential"
    for col in ("units", "connections", "weights", "biases", "macs"):
        assert sum(getattr(r, col) for r in blocks) == s.total(col)
        assert sum(getattr(r, col) for r in s.grouped(2)) == s.total(col)


def test_cli_table_json_csv(capsys):
    assert main(["inspect", "alexnet"]) == 0
    out = capsys.readouterr().out
    assert "61,100,840" in out and "FLOPs = 2 x MACs" in out
    assert "conv" in out and "96.0%" in out   # the linear layers' share of the parameters
    assert main(["inspect", "mnist_cnn", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["classes"] == 10 and data["totals"]["params"] == 63_626
    for col in ("units", "connections", "weights", "biases", "MACs"):   # rows add up to totals
        key = "macs" if col == "MACs" else col
        assert sum(r[col] for r in data["layers"]) == data["totals"][key]
    assert main(["inspect", "resnet18", "--depth", "1", "--format", "csv", "--classes", "10"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[-1]["layer"] == "total" and int(rows[-1]["weights"]) + int(rows[-1]["biases"]) == \
        sum(p.numel() for p in create_model("resnet18", 10).parameters())
    assert main(["inspect", "tiny_yolo_face", "--depth", "1", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "| conv12 " in out and "25x7x7" in out and "512x7x7" in out


def test_cli_input_and_channels(capsys):
    assert main(["inspect", "mnist_cnn", "--input", "1x56x56", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input"] == [1, 56, 56] and data["layers"][0]["output"] == "32x56x56"
    assert main(["inspect", "resnet18", "--input", "1x64x64", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["layers"][0]["weights"] == 7 * 7 * 1 * 64 and data["classes"] == 1000


def test_compare_all_issue_models(capsys):
    names = "alexnet,vgg16,googlenet,resnet50,mobilenet_v2,squeezenet1_0,densenet121,efficientnet_lite0"
    assert main(["inspect", "--compare", names, "--format", "json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == names.split(",")
    assert rows["alexnet"]["parameters"] == 61_100_840
    assert rows["vgg16"]["parameters"] == 138_357_544 and rows["resnet50"]["depth"] == 50
    assert rows["resnet50"]["ImageNet top-1 %"] == pytest.approx(76.1)
    assert rows["efficientnet_lite0"]["ImageNet top-1 %"] is None
    assert rows["mobilenet_v2"]["MACs"] < rows["resnet50"]["MACs"] < rows["vgg16"]["MACs"]


def test_errors(capsys):
    assert main(["inspect", "resnet81"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet81'" in err and "did you mean" in err and err.count("\n") == 1
    assert main(["inspect", "alexnet", "--input", "3x40x40"]) == 2
    err = capsys.readouterr().err
    assert "too small" in err and "'features.12'" in err and "3x63x63" in err
    assert main(["inspect", "lenet5", "--input", "1x28x28"]) == 2
    assert "'features.6'" in capsys.readouterr().err          # C5 has a 4x4 input for a 5x5 kernel
    for bad in ("3x224x", "3x224", "abc", "0x10x10", "2x224x224"):
        assert main(["inspect", "alexnet", "--input", bad]) == 2
        assert "--input" in capsys.readouterr().err
    assert main(["inspect", "--compare", "alexnet,vgg61"]) == 2
    assert "did you mean" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        parse_input("3x-1x4")
    assert parse_input("1x56x56") == (1, 56, 56) and parse_input("128") == (0, 128, 128)


def test_conv_cost_lecture_examples(capsys):
    std = conv_cost(480, 48, 5, 14)
    assert std.macs == 14 * 14 * 48 * 5 * 5 * 480 == 112_896_000
    a, b = bottleneck_costs(480, 48, 5, 14, bottleneck=16)
    assert (a.macs, b.macs) == (1_505_280, 3_763_200)
    assert conv_cost(6, 6, 3, 1).weights_per_output_channel == 54
    dw, pw = separable_costs(6, 6, 3, 1)
    assert dw.weights_per_output_channel + pw.weights_per_output_channel == 9 + 6
    assert main(["conv-cost"]) == 0
    out = capsys.readouterr().out
    assert "112.9M" in out and "1.5M + 3.8M = 5.3M" in out and "= 54" in out and "= 15" in out
    assert main(["conv-cost", "--in", "64", "--out", "128", "--kernel", "3", "--size", "56",
                 "--separable", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert str(56 * 56 * 3 * 3 * 64 * 128) in out and str(56 * 56 * 9 * 64 + 56 * 56 * 64 * 128) in out
    assert main(["conv-cost", "--in", "10", "--out", "4", "--kernel", "0"]) == 2


# `convlab inspect` output kept whole in tests/golden/ (pytest --update-golden rewrites it)
GOLDEN_TABLES = {
    "inspect_mnist_cnn.txt": ["mnist_cnn"],
    "inspect_lenet5.txt": ["lenet5"],
    "inspect_resnet18.txt": ["resnet18"],
    "inspect_mobilenet_v2_depth2.txt": ["mobilenet_v2", "--depth", "2"],
    "inspect_tiny_yolo_face_depth1.md": ["tiny_yolo_face", "--depth", "1", "--format", "markdown"],
}


@pytest.mark.parametrize("name", GOLDEN_TABLES)
def test_tables_equal_the_golden_files(name, golden, capsys):
    assert main(["inspect", *GOLDEN_TABLES[name]]) == 0
    golden(name, capsys.readouterr().out)


def _table_rows(text: str) -> dict[str, dict[str, str]]:
    """The per-layer table of `convlab inspect` text output: {layer: {column: cell}}."""
    lines = text.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    spans = [m.span() for m in re.finditer(r"-+", lines[top + 1])]
    columns = [lines[top][a:b].strip() for a, b in spans]
    rows = {}
    for line in lines[top + 2:]:
        if not line.strip():
            break
        cells = [line[a:b].strip() for a, b in spans]
        rows[cells[0]] = dict(zip(columns, cells))
    return rows


def _n(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_golden_tables_hold_numbers_worked_by_hand():
    rows = _table_rows((GOLDEN / "inspect_mnist_cnn.txt").read_text())
    conv, pool, linear = rows["network1.0"], rows["network1.3"], rows["network2"]
    assert conv["output"] == "32x28x28" and _n(conv["units"]) == 28 * 28 * 32
    assert _n(conv["weights"]) + _n(conv["biases"]) == 5 * 5 * 1 * 32 + 32
    assert _n(conv["connections"]) == _n(conv["MACs"]) == 28 * 28 * 5 * 5 * 1 * 32
    assert pool["output"] == "32x14x14" and _n(pool["connections"]) == 14 * 14 * 32 * 2 * 2
    assert _n(linear["weights"]) == 32 * 14 * 14 * 10 and _n(linear["biases"]) == 10
    assert "parameters 63,626 " in (GOLDEN / "inspect_mnist_cnn.txt").read_text()

    rows = _table_rows((GOLDEN / "inspect_lenet5.txt").read_text())
    c1 = next(r for r in rows.values() if r["type"] == "Conv2d")
    assert _n(c1["weights"]) + _n(c1["biases"]) == 5 * 5 * 1 * 6 + 6 == 156   # LeNet-5's C1
    rows = _table_rows((GOLDEN / "inspect_resnet18.txt").read_text())
    assert rows["conv1"]["output"] == "64x112x112"
    assert _n(rows["conv1"]["weights"]) == 7 * 7 * 3 * 64
    assert _n(rows["fc"]["weights"]) == 512 * 1000 and _n(rows["fc"]["biases"]) == 1000

    # every table: the layer rows add up to the printed totals, column by column
    for path in GOLDEN.glob("inspect_*.txt"):
        rows = _table_rows(path.read_text())
        total = rows.pop("total")
        for col in ("units", "connections", "weights", "biases", "MACs"):
            assert sum(_n(r[col]) for r in rows.values()) == _n(total[col]), (path.name, col)


# ------------------------------------------------------------------ receptive fields

def _rf(stats, name):
    return next(r.rf for r in stats.layers if r.name == name)


def test_receptive_fields_the_worked_numbers():
    a = model_stats("alexnet")
    # conv1 11x11 stride 4; pool1 3x3 stride 2 adds 2 x 4; conv2 5x5 adds 4 x 8; ...
    assert _rf(a, "features.0").size == (11, 11) and _rf(a, "features.0").jump == (4, 4)
    assert _rf(a, "features.2").size == (19, 19) == (11 + 2 * 4,) * 2
    assert _rf(a, "features.3").size == (51, 51) == (19 + 4 * 8,) * 2
    assert _rf(a, "features.12").size == (195, 195) and _rf(a, "features.12").jump == (32, 32)
    assert _rf(a, "features.0").start == (3.0, 3.0)            # (11-1)/2 - padding 2
    for name in ("classifier.1", "classifier.6"):
        assert _rf(a, name).is_global
    m = model_stats("mnist_cnn")
    assert _rf(m, "network1.0").size == (5, 5) and _rf(m, "network1.3").size == (6, 6)
    assert _rf(m, "network1.3").jump == (2, 2) and _rf(m, "network1.3").start == (0.5, 0.5)
    assert _rf(m, "network2").is_global
    r = model_stats("resnet18")                # residual adds: the union of both paths
    assert _rf(r, "layer4.1.conv2").size == (435, 435) and _rf(r, "avgpool").is_global


def test_receptive_field_rules_dilation_padding_same_and_global_pool():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2, padding="same"), nn.ZeroPad2d((1, 0, 2, 0)),
                          nn.MaxPool2d(2), nn.Conv2d(2, 2, (3, 1), stride=(2, 1)),
                          nn.AdaptiveAvgPool2d(1))
    s = layer_stats(model, (1, 16, 16))
    assert _rf(s, "0").size == (5, 5) and _rf(s, "0").start == (0.0, 0.0)   # 'same': centred
    assert _rf(s, "1").start == (-2.0, -1.0)                 # padding top 2, left 1
    assert _rf(s, "2").size == (6, 6) and _rf(s, "2").start == (-1.5, -0.5)
    assert _rf(s, "3").size == (10, 6) and _rf(s, "3").jump == (4, 2)
    assert _rf(s, "4").is_global


def test_receptive_field_is_where_the_gradient_reaches():
    """Independent check: with all-positive weights and no activation, unit (y, x) of a
    layer depends on exactly the input pixels of its box (clipped to the image)."""
    model = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.AvgPool2d(2),
                          nn.Conv2d(1, 1, 3, padding=1, dilation=1), nn.Conv2d(1, 1, 2, stride=2))
    for m in model:
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 1.0)
    s = layer_stats(model, (1, 40, 40))
    x = torch.rand(1, 1, 40, 40, requires_grad=True)
    for depth, name in enumerate(("0", "1", "2", "3"), 1):
        rf = _rf(s, name)
        y = model[:depth](x)
        for idx in ((0, 0), (1, 2), (y.shape[-2] - 1, y.shape[-1] - 1)):
            (g,) = torch.autograd.grad(y[0, 0, idx[0], idx[1]], x, retain_graph=True)
            (t, b), (l, r) = rf.box(idx)
            expected = torch.zeros(40, 40, dtype=torch.bool)
            expected[max(t, 0):b, max(l, 0):r] = True
            assert torch.equal(g[0, 0] != 0, expected), (name, idx, rf)


def test_cli_prints_receptive_fields(capsys):
    assert main(["inspect", "alexnet", "--format", "json"]) == 0
    rows = {r["layer"]: r for r in json.loads(capsys.readouterr().out)["layers"]}
    assert [rows[n]["RF"] for n in ("features.0", "features.2", "features.3", "features.12")] == \
        [11, 19, 51, 195]
    assert rows["features.12"]["jump"] == 32 and rows["features.0"]["start"] == 3
    assert rows["classifier.1"]["RF"] == "global" and rows["classifier.1"]["jump"] is None
