"""DDPM-style networks (``pytorch_diffusion`` parameter names): the DDIM ``Model`` of the official DiffOOD code
(network/ddim/ddim.py) and the encoder / decoder of LDM's first stage (ldm/modules/diffusionmodules/model.py)."""
import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """DDPM's embedding: sin then cos of t * 10000^(-i / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        if temb:
            self.temb_proj = nn.Linear(temb, cout)
        self.norm2, self.dropout = group_norm(cout), nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if temb is not None:
            h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = group_norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        q, k, v = (m(h).flatten(2) for m in (self.q, self.k, self.v))        # b, c, n
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        out = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, hgt, wid)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _down_levels(ch, ch_mult, blocks, attend, temb, dropout):
    """(ModuleList of levels with block / attn / downsample, channel count at the bottom)."""
    levels, cin = nn.ModuleList(), ch
    for i, mult in enumerate(ch_mult):
        level = nn.Module()
        level.block, level.attn = nn.ModuleList(), nn.ModuleList()
        for _ in range(blocks):
            level.block.append(ResnetBlock(cin, ch * mult, temb, dropout))
            cin = ch * mult
            if attend(i):
                level.attn.append(AttnBlock(cin))
        if i != len(ch_mult) - 1:
            level.downsample = Downsample(cin)
        levels.append(level)
    return levels, cin


def _middle(c, temb, dropout):
    mid = nn.Module()
    mid.block_1, mid.attn_1 = ResnetBlock(c, c, temb, dropout), AttnBlock(c)
    mid.block_2 = ResnetBlock(c, c, temb, dropout)
    return mid


class DDIMModel(nn.Module):
    """network/ddim/ddim.py ``Model``: ``temb.dense``, ``down``/``mid``/``up``, ``label_emb`` (classes + 1 rows)."""

    def __init__(self, image_size=8, in_channels=3, out_ch=3, ch=32, ch_mult=(1, 2, 2), num_res_blocks=2,
                 attn_resolutions=(4,), num_classes=3, dropout=0.0):
        super().__init__()
        self.ch, self.num_classes, levels = ch, num_classes, len(ch_mult)
        temb = 4 * ch
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb), nn.Linear(temb, temb)])
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        attend = lambda i: image_size // 2 ** i in attn_resolutions
        self.down, c = _down_levels(ch, ch_mult, num_res_blocks, attend, temb, dropout)
        self.mid = _middle(c, temb, dropout)
        skip_channels = [ch]  # what the down path keeps for the up path: conv_in, every block, every downsample
        for i, mult in enumerate(ch_mult):
            skip_channels += [ch * mult] * (num_res_blocks + (i != levels - 1))
        ups = []
        for i in reversed(range(levels)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(c + skip_channels.pop(), ch * ch_mult[i], temb, dropout))
                c = ch * ch_mult[i]
                if attend(i):
                    level.attn.append(AttnBlock(c))
            if i != 0:
                level.upsample = Upsample(c)
            ups.insert(0, level)
        self.up = nn.ModuleList(ups)
        self.norm_out, self.conv_out = group_norm(c), nn.Conv2d(c, out_ch, 3, padding=1)
        if num_classes > 0:
            self.label_emb = nn.Embedding(num_classes + 1, temb)

    def forward(self, x, t, y=None):
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](sinusoid(t, self.ch))))
        if self.num_classes > 0:
            temb = temb + self.label_emb(y)
        skips = [self.conv_in(x)]
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(skips[-1], temb)
                skips.append(level.attn[j](h) if len(level.attn) else h)
            if hasattr(level, "downsample"):
                skips.append(level.downsample(skips[-1]))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(skips[-1], temb)), temb)
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(torch.cat([h, skips.pop()], 1), temb)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Encoder(nn.Module):
    """LDM's first-stage ``Encoder`` (no time embedding; attention only in the middle when attn_resolutions=[])."""

    def __init__(self, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, in_channels=3, z_channels=3):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down, c = _down_levels(ch, ch_mult, num_res_blocks, lambda i: False, 0, 0.0)
        self.mid = _middle(c, 0, 0.0)
        self.norm_out, self.conv_out = group_norm(c), nn.Conv2d(c, z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """LDM's first-stage ``Decoder``: ``up`` indexed by level, run from the deepest level up."""

    def __init__(self, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, out_ch=3, z_channels=3):
        super().__init__()
        c = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c, 3, padding=1)
        self.mid = _middle(c, 0, 0.0)
        ups = []
        for i in reversed(range(len(ch_mult))):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(c, ch * ch_mult[i], 0))
                c = ch * ch_mult[i]
            if i != 0:
                level.upsample = Upsample(c)
            ups.insert(0, level)
        self.up = nn.ModuleList(ups)
        self.norm_out, self.conv_out = group_norm(c), nn.Conv2d(c, out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for i in reversed(range(len(self.up))):
            for block in self.up[i].block:
                h = block(h)
            if hasattr(self.up[i], "upsample"):
                h = self.up[i].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
