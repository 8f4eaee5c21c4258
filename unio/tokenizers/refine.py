"""Image-guided refinement of decoded dense maps (depth, masks).

An 8 x 8 grid of codes for a 64 px map places an object's outline only to within a few pixels:
the decoder blurs every edge it cannot place, and on the shapes world most of the depth error of
a perfect code prediction sits on those edges. When a dense map answers a question about a
picture, that picture is at hand when the codes are read back, and its edges are sharp. The
refiner uses it the way guided upsampling does (joint bilateral upsampling, Kopf et al., 2007;
the guided filter, He et al., 2013; learned joint filters, Li et al., 2016): a small
convolutional network looks at the decoded map and the picture and predicts, for every pixel, a
softmax over its ``kernel x kernel`` neighbourhood (kernel prediction, Bako et al., 2017); the
refined value is that weighted mean of the decoded values.

So the output is a convex combination of decoded values at most ``kernel // 2`` pixels away: the
refiner can move an edge onto the picture's edge and smooth noise, but it cannot make a depth (or
a mask) that the codes do not hold; a flat decoded map stays flat whatever the picture shows.

Maps travel as the tokenizer draws them (:mod:`unio.tokenizers.dense`): one grey channel in
[0, 1], the mean of the decoded RGB.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TokenizerError

__all__ = ["RefinerConfig", "GuidedRefiner", "REFINABLE"]

REFINABLE = ("depth", "mask")


@dataclass
class RefinerConfig:
    kernel: int = 9      # neighbourhood side: values move at most kernel // 2 pixels
    channels: int = 32   # width of the weight-predicting network
    layers: int = 4      # 3x3 convolutions (receptive field 2 * layers + 1 pixels)

    def __post_init__(self):
        for name in ("kernel", "channels", "layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TokenizerError(f"refiner {name} must be an integer, got {value!r}")
        if self.kernel < 3 or self.kernel > 15 or self.kernel % 2 == 0:
            raise TokenizerError(f"refiner kernel must be odd, from 3 to 15, got {self.kernel}")
        if self.channels < 4:
            raise TokenizerError(f"refiner channels must be >= 4, got {self.channels}")
        if self.layers < 2:
            raise TokenizerError(f"refiner layers must be >= 2, got {self.layers}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], kind: str = "") -> "RefinerConfig":
        if not isinstance(d, dict):
            raise TokenizerError(f"refiners.{kind} must be a mapping such as {{'kernel': 9}}, got {d!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TokenizerError(f"refiners.{kind} has unknown keys {unknown}; it takes {sorted(known)}")
        return cls(**d)


class GuidedRefiner(nn.Module):
    """(decoded map (B, 1, H, W) in [0, 1], picture (B, 3, H, W) in [0, 1]) -> refined map (B, 1, H, W).

    The last layer starts at zero, so an untrained refiner is a box filter over the neighbourhood;
    at any weights the output stays inside [min, max] of each neighbourhood of the input.
    """

    def __init__(self, config: RefinerConfig | None = None):
        super().__init__()
        self.config = config or RefinerConfig()
        c, k = self.config.channels, self.config.kernel
        convs: list[nn.Module] = [nn.Conv2d(4, c, 3, padding=1), nn.SiLU()]
        for _ in range(self.config.layers - 2):
            convs += [nn.Conv2d(c, c, 3, padding=1), nn.SiLU()]
        convs.append(nn.Conv2d(c, k * k, 3, padding=1))
        self.net = nn.Sequential(*convs)
        nn.init.zeros_(convs[-1].weight)
        nn.init.zeros_(convs[-1].bias)

    def forward(self, value: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        if value.ndim != 4 or value.shape[1] != 1:
            raise TokenizerError(f"the refiner takes maps (B, 1, H, W), got {tuple(value.shape)}")
        if guide.shape[0] != value.shape[0] or guide.shape[1] != 3 or guide.shape[-2:] != value.shape[-2:]:
            raise TokenizerError(f"the guide must be pictures (B, 3, H, W) matching the maps {tuple(value.shape)}, "
                                 f"got {tuple(guide.shape)}")
        k = self.config.kernel
        weights = self.net(torch.cat([value * 2 - 1, guide * 2 - 1], 1)).softmax(1)       # (B, k*k, H, W)
        B, _, H, W = value.shape
        patches = F.unfold(F.pad(value, (k // 2,) * 4, mode="replicate"), k).view(B, k * k, H, W)
        return (weights * patches).sum(1, keepdim=True)
