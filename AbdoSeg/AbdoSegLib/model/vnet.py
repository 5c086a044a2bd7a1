"""The V-Net (Milletari et al., 2016): a residual encoder-decoder of 3D convolutions.

Each stage is a stack of convolutions whose output is added to its input (residual);
stages are joined by strided-convolution downsampling (channels x2) and transposed-
convolution upsampling (channels /2), and decoder stages concatenate the encoder stage of
the same resolution (skip connections). Instance normalisation and PReLU follow each
convolution.

Input (N, in_channels, X, Y, Z) with X, Y, Z divisible by 2**depth;
output logits (N, num_classes, X, Y, Z).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class VNetConfig:
    """Architecture of a V-Net.

    width: channels of the first stage (each level doubles it).
    depth: number of downsamplings; inputs must be divisible by 2**depth.
    kernel_size: edge of the cubic convolution kernels in the stages.
    convs_per_stage: convolutions in the stage at each level 0..depth (encoder and decoder).
    """

    in_channels: int = 1
    num_classes: int = 5
    width: int = 8
    depth: int = 4
    kernel_size: int = 3
    convs_per_stage: tuple[int, ...] = field(default=(1, 2, 3, 3, 3))

    def __post_init__(self) -> None:
        object.__setattr__(self, "convs_per_stage", tuple(int(n) for n in self.convs_per_stage))
        if len(self.convs_per_stage) != self.depth + 1:
            raise ValueError(f"convs_per_stage needs {self.depth + 1} entries (levels 0..depth), got {self.convs_per_stage}")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.width % self.in_channels:
            raise ValueError(f"width {self.width} must be a multiple of in_channels {self.in_channels}")

    @property
    def divisor(self) -> int:
        """Every spatial input size must be a multiple of this."""
        return 2**self.depth

    def to_dict(self) -> dict:
        data = asdict(self)
        data["convs_per_stage"] = list(self.convs_per_stage)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> VNetConfig:
        return cls(**data)


def _conv_unit(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.InstanceNorm3d(out_channels, affine=True),
        nn.PReLU(out_channels),
    )


class ResidualStage(nn.Module):
    """``n`` convolutions at constant width; output = PReLU(convs(x) + x)."""

    def __init__(self, channels: int, n_convs: int, kernel_size: int):
        super().__init__()
        units = [_conv_unit(channels, channels, kernel_size) for _ in range(n_convs)]
        # The last unit's activation comes after the residual sum.
        units[-1] = units[-1][:-1]
        self.convs = nn.Sequential(*units)
        self.activation = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.convs(x) + x)


class VNet(nn.Module):
    """The V-Net described by a VNetConfig."""

    def __init__(self, config: VNetConfig = VNetConfig()):
        super().__init__()
        self.config = config
        c, k = config.width, config.kernel_size
        self.input_conv = nn.Sequential(nn.Conv3d(config.in_channels, c, k, padding=k // 2), nn.InstanceNorm3d(c, affine=True))
        self.input_activation = nn.PReLU(c)
        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        for level in range(1, config.depth + 1):
            channels = c * 2**level
            self.down.append(_down(channels // 2, channels))
            self.encoder.append(ResidualStage(channels, config.convs_per_stage[level], k))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        in_channels = c * 2**config.depth
        for level in reversed(range(config.depth)):
            skip_channels = c * 2**level
            self.up.append(_up(in_channels, skip_channels))
            self.decoder.append(ResidualStage(2 * skip_channels, config.convs_per_stage[level], k))
            in_channels = 2 * skip_channels
        self.head = nn.Conv3d(in_channels, config.num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The input stage's residual: the input repeated across the stage's channels.
        x = self.input_activation(self.input_conv(x) + x.repeat(1, self.config.width // x.shape[1], 1, 1, 1))
        skips = [x]
        for down, stage in zip(self.down, self.encoder):
            x = stage(down(x))
            skips.append(x)
        skips.pop()
        for up, stage in zip(self.up, self.decoder):
            x = stage(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel_size=2, stride=2),
        nn.InstanceNorm3d(out_channels, affine=True),
        nn.PReLU(out_channels),
    )


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2),
        nn.InstanceNorm3d(out_channels, affine=True),
        nn.PReLU(out_channels),
    )
