"""The untrained generators f(theta, z) whose structure is the prior.

``skip`` is the paper's encoder-decoder: at every scale the signal goes down (a stride-2 or
pooled 3x3 convolution, then a 3x3 one), deeper, back up (bilinear or nearest), and is
concatenated with a narrow skip branch taken before going down. ``hourglass`` is the same
without the skip branches. Every convolution is reflection-padded and followed by BatchNorm
and LeakyReLU(0.2); a 1x1 convolution and a sigmoid make the output image.

Inputs must have sides divisible by ``2 ** scales``; :func:`padded_size` gives the size to fit
at, and the fitting code pads and crops around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class NetConfig:
    """Architecture of a generator; presets hold these as data.

    ``channels_down``, ``channels_up`` and ``channels_skip`` have one entry per scale, from the
    finest to the coarsest; a skip width of 0 drops that skip branch.
    """

    kind: str = "skip"  # "skip" or "hourglass"
    channels_down: tuple[int, ...] = (128, 128, 128, 128, 128)
    channels_up: tuple[int, ...] = (128, 128, 128, 128, 128)
    channels_skip: tuple[int, ...] = (4, 4, 4, 4, 4)
    filter_down: int = 3
    filter_up: int = 3
    filter_skip: int = 1
    upsample: str = "bilinear"  # "bilinear" or "nearest"
    downsample: str = "stride"  # "stride", "avg" or "max"
    need_1x1_up: bool = True
    batchnorm: bool = True
    pad: str = "reflection"  # "reflection" (the paper's) or "zeros" (cheaper: fused into the convolution)
    # Refine the input instead of drawing the image: the output is sigmoid(logit(start) + head),
    # ``start`` being the input's first channels (an estimate) and the head starting at zero, so
    # the fit begins exactly at the estimate and learns only corrections.
    residual: bool = False

    @property
    def scales(self) -> int:
        return len(self.channels_down)


def _conv(cin: int, cout: int, k: int, stride: int = 1, downsample: str = "stride", pad: str = "reflection") -> nn.Sequential:
    layers: list[nn.Module] = []
    if stride != 1 and downsample != "stride":
        pool = nn.AvgPool2d if downsample == "avg" else nn.MaxPool2d
        post = [pool(stride, stride)]
        stride = 1
    else:
        post = []
    width = (k - 1) // 2
    if width and pad == "reflection":
        layers.append(nn.ReflectionPad2d(width))
        width = 0
    layers.append(nn.Conv2d(cin, cout, k, stride=stride, padding=width, bias=True))
    return nn.Sequential(*layers, *post)


def _block(cin: int, cout: int, k: int, cfg: NetConfig, stride: int = 1):
    return [
        _conv(cin, cout, k, stride, cfg.downsample, cfg.pad),
        nn.BatchNorm2d(cout) if cfg.batchnorm else nn.Identity(),
        nn.LeakyReLU(0.2, inplace=True),
    ]


class Level(nn.Module):
    """One scale of the encoder-decoder: down, deeper levels, up, joined with the skip branch."""

    def __init__(self, cin: int, down: int, up: int, skip: int, deeper: "Level | None", cfg: NetConfig):
        super().__init__()
        bn = cfg.batchnorm
        self.skip = nn.Sequential(*_block(cin, skip, cfg.filter_skip, cfg)) if skip else None
        self.down = nn.Sequential(
            *_block(cin, down, cfg.filter_down, cfg, stride=2),
            *_block(down, down, cfg.filter_down, cfg),
        )
        self.deeper = deeper
        deeper_out = deeper.out_channels if deeper is not None else down
        mode = cfg.upsample
        self.upsample = nn.Upsample(
            scale_factor=2, mode=mode, align_corners=False if mode == "bilinear" else None
        )
        joined = skip + deeper_out
        up_layers: list[nn.Module] = [nn.BatchNorm2d(joined) if bn else nn.Identity()]
        up_layers += _block(joined, up, cfg.filter_up, cfg)
        if cfg.need_1x1_up:
            up_layers += _block(up, up, 1, cfg)
        self.up = nn.Sequential(*up_layers)
        self.out_channels = up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.down(x)
        if self.deeper is not None:
            d = self.deeper(d)
        d = self.upsample(d)
        if self.skip is not None:
            d = torch.cat([self.skip(x), d], dim=1)
        return self.up(d)


class Generator(nn.Module):
    """The whole network: nested levels, a 1x1 output convolution and a sigmoid."""

    def __init__(self, in_channels: int, out_channels: int, cfg: NetConfig):
        super().__init__()
        n = cfg.scales
        if not (len(cfg.channels_up) == len(cfg.channels_skip) == n) or n < 1:
            raise ValueError("channels_down, channels_up and channels_skip need one entry per scale")
        skips = cfg.channels_skip if cfg.kind == "skip" else (0,) * n
        level = None
        for i in reversed(range(n)):
            cin = in_channels if i == 0 else cfg.channels_down[i - 1]
            level = Level(cin, cfg.channels_down[i], cfg.channels_up[i], skips[i], level, cfg)
        self.body = level
        self.head = nn.Sequential(nn.Conv2d(cfg.channels_up[0], out_channels, 1, bias=True), nn.Sigmoid())
        self.config = cfg
        self.factor = 2**n
        self.out_channels = out_channels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.config.residual:
            return self.head(self.body(z))
        start = z[:, : self.out_channels].clamp(RESIDUAL_EPS, 1 - RESIDUAL_EPS)
        return torch.sigmoid(torch.logit(start) + self.head[0](self.body(z)))

    def reset_head(self) -> None:
        """With ``residual``, start the corrections at zero (the output is then the estimate)."""
        if self.config.residual:
            with torch.no_grad():
                self.head[0].weight.zero_()
                self.head[0].bias.zero_()


RESIDUAL_EPS = 1e-3  # keeps logit(start) finite where the estimate is black or white


def build_network(cfg: NetConfig, in_channels: int, out_channels: int) -> Generator:
    """Build the generator described by ``cfg``."""
    if cfg.kind not in ("skip", "hourglass"):
        raise ValueError(f"unknown network kind {cfg.kind!r}")
    return Generator(in_channels, out_channels, cfg)


def padded_size(height: int, width: int, scales: int) -> tuple[int, int]:
    """The smallest size >= (height, width) the network accepts.

    Sides become multiples of ``2 ** scales`` and at least ``2 ** (scales + 1)``, so the coarsest
    level still has two pixels to reflect-pad.
    """
    f = 2**scales

    def up(n: int) -> int:
        return max(2 * f, -(-n // f) * f)

    return up(height), up(width)


def draw_size(height: int, width: int, scales: int, pixels: int) -> tuple[int, int]:
    """The input size of a network that draws a (``height``, ``width``) image at no more than
    about ``pixels`` pixels (:class:`Upsampled`): the padded size itself where that is small enough."""
    if pixels <= 0 or height * width <= pixels:
        return padded_size(height, width, scales)
    s = math.sqrt(height * width / pixels)
    return padded_size(max(1, round(height / s)), max(1, round(width / s)), scales)


class Upsampled(nn.Module):
    """A generator whose output is upscaled bicubically to ``size`` (clipped to [0, 1]): it draws
    the image coarsely, and the data term sees the image at its own size."""

    def __init__(self, net: nn.Module, size: tuple[int, int]):
        super().__init__()
        self.net = net
        self.size = tuple(size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(self.net(z), size=self.size, mode="bicubic", align_corners=False)
        return x.clamp(0.0, 1.0)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
