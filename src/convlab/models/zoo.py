"""The architecture zoo: classic ImageNet networks built by torchvision and timm
(never re-typed here), plus the lecture's TinyYOLOv2-style face network.

Every entry builds for any number of classes and 1 or 3 input channels, without
downloading anything: torchvision and timm are called with no weights, and a
1-channel build replaces the first convolution by one of the same shape that takes
one input channel. The offline backbones (EfficientNet-Lite0/1/2, MobileNetV2) carry
their bundled weights (`pretrained.BUNDLED`) and those weights' preprocessing.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .pretrained import BUNDLED
from .spec import ModelSpec

__all__ = ["zoo_specs", "TinyYoloFace", "IMAGENET_MEAN", "IMAGENET_STD",
           "replace_first_conv"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the EfficientNet-Lite models were trained on x = (pixel - 127) / 128
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
# input size and crop of each Lite model's published evaluation (timm's pretrained_cfg)
LITE_INPUT = {0: (224, 0.875), 1: (240, 0.882), 2: (260, 0.89)}


def replace_first_conv(model: nn.Module, in_chans: int) -> nn.Module:
    """Swap the first nn.Conv2d for one with `in_chans` inputs and otherwise the same shape."""
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d):
            break
    else:
        raise ValueError(f"{type(model).__name__} has no Conv2d")
    if conv.in_channels == in_chans:
        return model
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
    return model


def _torchvision(name: str, **fixed) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_chans: int, input_size: int, **kw) -> nn.Module:
        from torchvision.models import get_model

        model = get_model(name, weights=None, num_classes=num_classes, **{**fixed, **kw})
        return replace_first_conv(model, in_chans) if in_chans != 3 else model
    return build


def _timm(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_chans: int, input_size: int, **kw) -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes,
                                 in_chans=in_chans, **kw)
    return build


def _lite(n: int) -> ModelSpec:
    size, crop = LITE_INPUT[n]
    return ModelSpec(f"efficientnet_lite{n}", _timm(f"tf_efficientnet_lite{n}"),
                     f"EfficientNet-Lite{n} (timm tf_efficientnet_lite{n}, {size}x{size}); "
                     f"bundled ImageNet weights", family="zoo", input_size=size,
                     min_input_size=1, channels=3, resize="shorter_crop", mean=LITE_MEAN,
                     std=LITE_STD, head="classifier", interpolation="bicubic",
                     crop_fraction=crop, num_classes=1000,
                     bundled=BUNDLED[f"efficientnet_lite{n}"])


def _conv_bn(cin: int, cout: int, k: int, groups: int = 1) -> nn.Sequential:
    # darknet's convolution: no bias (BatchNorm has one), leaky ReLU 0.1
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True))


class TinyYoloFace(nn.Module):
    """The lecture's TinyYOLOv2-style face network (224x224x3 -> a 7x7x25 grid).

    conv1 is a full 3x3 convolution to 16 channels; then depthwise 3x3 + pointwise 1x1
    pairs (16->32, 32->64, 64->128, 128->256, 256->512) with 2x2 max pools between them,
    max6 is a 2x2 max pool with stride 1 that keeps 7x7, and conv12 is a 1x1 convolution
    to `num_classes` channels (25 in the lecture: 5 anchors x (4 box + 1 face score)).
    The grid is averaged over space so the network also trains as a classifier.
    """

    def __init__(self, num_classes: int = 25, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = _conv_bn(in_chans, 16, 3)
        self.max1 = nn.MaxPool2d(2)
        chans = [16, 32, 64, 128, 256, 512]
        for i, (cin, cout) in enumerate(zip(chans, chans[1:])):
            self.add_module(f"conv{2 * i + 2}", _conv_bn(cin, cin, 3, groups=cin))  # depthwise
            self.add_module(f"conv{2 * i + 3}", _conv_bn(cin, cout, 1))              # pointwise
            if i < 4:
                self.add_module(f"max{i + 2}", nn.MaxPool2d(2))
        # darknet pads right/bottom by one so a stride-1 2x2 pool keeps the size
        self.max6 = nn.Sequential(nn.ReplicationPad2d((0, 1, 0, 1)), nn.MaxPool2d(2, stride=1))
        self.conv12 = nn.Conv2d(512, num_classes, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, 224, 224) -> the (N, num_classes, 7, 7) output grid."""
        for name, layer in self.named_children():
            if name == "pool":
                break
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.grid(x)).flatten(1)  # (N, K, 7, 7) -> (N, K)


def _tiny_yolo(num_classes: int, in_chans: int, input_size: int, detect: bool = False,
               **kw) -> nn.Module:
    """The classifier form, or with detect=True the detector (models.detector:
    anchors=..., batchnorm=...), which detection data builds."""
    if detect:
        from .detector import TinyYoloDetector
        return TinyYoloDetector(num_classes=num_classes, in_chans=in_chans, **kw)
    return TinyYoloFace(num_classes=num_classes, in_chans=in_chans, **kw)


def zoo_specs() -> list:
    """The zoo's ModelSpecs, for the registry's table."""
    def tv(name, description, head, min_size, input_size=224, interpolation="bilinear",
           crop_fraction=0.875, **fixed):
        # the preprocessing of torchvision's IMAGENET1K_V1 weights (tests/test_zoo.py checks it)
        return ModelSpec(name, _torchvision(name, **fixed), description, family="zoo",
                         input_size=input_size, min_input_size=min_size, channels=3,
                         resize="shorter_crop", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         head=head, interpolation=interpolation, crop_fraction=crop_fraction,
                         num_classes=1000, bundled=BUNDLED.get(name))

    vgg = {"11": "8 conv", "16": "13 conv", "19": "16 conv"}
    specs = [tv("alexnet", "AlexNet (2012): 5 conv + 3 fully connected", "classifier.6", 63)]
    for depth, convs in vgg.items():
        specs.append(tv(f"vgg{depth}", f"VGG-{depth} (2014): {convs} 3x3 + 3 fully connected",
                        "classifier.6", 32))
        specs.append(tv(f"vgg{depth}_bn", f"VGG-{depth} with BatchNorm", "classifier.6", 32))
    specs += [
        tv("googlenet", "GoogLeNet / Inception v1 (2014), no auxiliary classifiers", "fc", 15,
           aux_logits=False, init_weights=True),
        tv("inception_v3", "Inception v3 (2015), 299x299, no auxiliary classifier", "fc", 75,
           input_size=299, crop_fraction=299 / 342, aux_logits=False, init_weights=True),
    ]
    for depth in (18, 34, 50, 101, 152):
        kind = "basic blocks" if depth < 50 else "bottleneck blocks"
        specs.append(tv(f"resnet{depth}", f"ResNet-{depth} (2015): residual {kind}", "fc", 1))
    specs += [
        tv("mobilenet_v2", "MobileNetV2 (2018): inverted residuals, depthwise conv; "
           "bundled ImageNet weights", "classifier.1", 1),
        tv("mobilenet_v3_small", "MobileNetV3-Small (2019): searched, squeeze-excite",
           "classifier.3", 1),
        tv("mobilenet_v3_large", "MobileNetV3-Large (2019): searched, squeeze-excite",
           "classifier.3", 1),
        tv("squeezenet1_0", "SqueezeNet 1.0 (2016): fire modules, conv classifier",
           "classifier.1", 21),
        tv("squeezenet1_1", "SqueezeNet 1.1: fewer MACs than 1.0", "classifier.1", 17),
        tv("densenet121", "DenseNet-121 (2017): dense connections", "classifier", 29),
        tv("efficientnet_b0", "EfficientNet-B0 (2019): compound scaling, squeeze-excite",
           "classifier.1", 1, interpolation="bicubic"),
        *(_lite(n) for n in LITE_INPUT),
        ModelSpec("tiny_yolo_face", _tiny_yolo,
                  "the lecture's TinyYOLOv2 face net: depthwise-separable, 7x7x25 grid",
                  family="zoo", input_size=224, min_input_size=32, channels=3,
                  head="conv12", num_classes=25),
    ]
    return specs

