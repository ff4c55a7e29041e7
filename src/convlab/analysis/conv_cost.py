"""What one convolution costs: weights and multiply-adds, and the two classic savings
(a 1x1 bottleneck before a large kernel; a depthwise-separable convolution)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["ConvCost", "conv_cost", "bottleneck_costs", "separable_costs", "LECTURE_EXAMPLES"]


@dataclass(frozen=True)
class ConvCost:
    """One convolution layer with M input and N output channels on an H x W output map."""

    label: str
    in_channels: int    # M
    out_channels: int   # N
    kernel: int         # K
    height: int         # H (output)
    width: int          # W (output)
    groups: int = 1

    @property
    def weights_per_output_channel(self) -> int:
        return self.kernel * self.kernel * self.in_channels // self.groups   # K*K*M/groups

    @property
    def weights(self) -> int:
        return self.weights_per_output_channel * self.out_channels           # K*K*M*N/groups

    @property
    def macs(self) -> int:
        return self.height * self.width * self.weights                      # W*H*K*K*M*N/groups


def conv_cost(in_channels: int, out_channels: int, kernel: int, size: int | tuple[int, int],
              groups: int = 1, label: str = "") -> ConvCost:
    """The cost of one convolution; `size` is the output map (H or (H, W))."""
    h, w = (size, size) if isinstance(size, int) else size
    for what, v in (("in channels", in_channels), ("out channels", out_channels),
                    ("kernel", kernel), ("height", h), ("width", w), ("groups", groups)):
        if v < 1:
            raise ConfigError(f"{what} must be a positive integer; got {v}")
    if in_channels % groups or out_channels % groups:
        raise ConfigError(f"groups ({groups}) must divide both the in ({in_channels}) and out "
                          f"({out_channels}) channels")
    label = label or (f"{kernel}x{kernel} {in_channels}->{out_channels}"
                      + (" depthwise" if groups == in_channels == out_channels and groups > 1
                         else f" groups={groups}" if groups > 1 else ""))
    return ConvCost(label, in_channels, out_channels, kernel, h, w, groups)


def bottleneck_costs(in_channels: int, out_channels: int, kernel: int, size: int | tuple[int, int],
                     bottleneck: int) -> list[ConvCost]:
    """A 1x1 convolution down to `bottleneck` channels, then the KxK convolution."""
    return [conv_cost(in_channels, bottleneck, 1, size),
            conv_cost(bottleneck, out_channels, kernel, size)]


def separable_costs(in_channels: int, out_channels: int, kernel: int,
                    size: int | tuple[int, int]) -> list[ConvCost]:
    """A depthwise KxK convolution (one kernel per input channel), then a pointwise 1x1."""
    return [conv_cost(in_channels, in_channels, kernel, size, groups=in_channels),
            conv_cost(in_channels, out_channels, 1, size)]


# The lecture's worked examples: (title, standard, cheaper alternative)
LECTURE_EXAMPLES = {
    "inception": dict(in_channels=480, out_channels=48, kernel=5, size=14, bottleneck=16),
    "separable": dict(in_channels=6, out_channels=6, kernel=3, size=1),
}
