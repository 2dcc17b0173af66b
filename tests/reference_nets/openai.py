"""The improved-diffusion ``UNetModel`` (openai parameter names): the official DiffOOD iDDPM network
(network/iddpm/unet.py: fused-qkv multi-head attention, label_emb with classes + 1 rows, output split into
epsilon and variance) and LDM's UNet (ldm/modules/diffusionmodules/openaimodel.py with SpatialTransformer
cross-attention from ldm/modules/attention.py)."""
import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """improved-diffusion's embedding: cos then sin of t * 10000^(-i / (dim/2))."""
    half = dim // 2
    angles = t.float()[:, None] * torch.exp(-math.log(10000.0) * torch.arange(half).float() / half)[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def norm32(c: int, eps: float = 1e-5) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=eps)


class ResBlock(nn.Module):
    def __init__(self, cin, emb, cout, scale_shift):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(norm32(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, 2 * cout if scale_shift else cout))
        self.out_layers = nn.Sequential(norm32(cout), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x, emb, context=None):
        h = self.in_layers(x)
        e = self.emb_layers(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over a fused qkv: per head, channels [q | k | v]."""

    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.norm = norm32(c)
        self.qkv = nn.Conv1d(c, 3 * c, 1)
        self.proj_out = nn.Conv1d(c, c, 1)

    def forward(self, x, emb=None, context=None):
        b, c, hgt, wid = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat)).reshape(b, self.heads, 3, c // self.heads, -1)
        q, k, v = qkv.unbind(2)                                            # b, heads, d, n
        w = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(c // self.heads), dim=-1)
        out = torch.einsum("bhij,bhdj->bhdi", w, v).reshape(b, c, -1)
        return (flat + self.proj_out(out)).reshape(b, c, hgt, wid)


class CrossAttention(nn.Module):
    def __init__(self, dim, context_dim, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x, context):
        split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, self.dim_head).transpose(1, 2)
        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.dim_head), dim=-1)
        out = (w @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, heads, dim_head, context_dim):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context):
        h = self.norm1(x)
        x = x + self.attn1(h, h)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, c, heads, dim_head, depth, context_dim):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, c, eps=1e-6)
        self.proj_in = nn.Conv2d(c, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)])
        self.proj_out = nn.Conv2d(inner, c, 1)

    def forward(self, x, emb=None, context=None):
        b, c, hgt, wid = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            h = block(h, context)
        return x + self.proj_out(h.transpose(1, 2).reshape(b, -1, hgt, wid))


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.op = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x, emb=None, context=None):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, emb=None, context=None):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Sequence(nn.ModuleList):
    """TimestepEmbedSequential: every layer gets the embedding and the context."""

    def forward(self, x, emb, context):
        for layer in self:
            x = layer(x, emb, context) if not isinstance(layer, nn.Conv2d) else layer(x)
        return x


class UNetModel(nn.Module):
    """``attention``: "qkv" (iDDPM AttentionBlock with ``num_heads`` / ``num_heads_upsample``) or "transformer"
    (LDM SpatialTransformer with ``num_heads`` heads of ch // num_heads, or heads of ``num_head_channels``).
    ``num_classes`` > 0 adds label_emb with num_classes + 1 rows (iDDPM); ``learned_sigma`` returns the first
    ``in_channels`` output channels, as the official iDDPM forward does."""

    def __init__(self, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=2, attention_resolutions=(2,),
                 channel_mult=(1, 2, 2), num_heads=2, num_heads_upsample=-1, num_head_channels=-1,
                 use_scale_shift_norm=False, num_classes=0, attention="qkv", transformer_depth=1, context_dim=None,
                 learned_sigma=False):
        super().__init__()
        self.model_channels, self.num_classes, self.learned_sigma = model_channels, num_classes, learned_sigma
        self.in_channels = in_channels
        emb = 4 * model_channels
        up_heads = num_heads if num_heads_upsample == -1 else num_heads_upsample

        def attend(c, heads):
            if attention == "qkv":
                return AttentionBlock(c, heads)
            heads = c // num_head_channels if num_head_channels != -1 else heads
            return SpatialTransformer(c, heads, c // heads, transformer_depth, context_dim)

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        if num_classes > 0:
            self.label_emb = nn.Embedding(num_classes + 1, emb)
        self.input_blocks = nn.ModuleList([Sequence([nn.Conv2d(in_channels, model_channels, 3, padding=1)])])
        skips, c, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(c, emb, mult * model_channels, use_scale_shift_norm)]
                c = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attend(c, num_heads))
                self.input_blocks.append(Sequence(layers))
                skips.append(c)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Sequence([Downsample(c)]))
                skips.append(c)
                ds *= 2
        self.middle_block = Sequence([ResBlock(c, emb, c, use_scale_shift_norm), attend(c, num_heads),
                                      ResBlock(c, emb, c, use_scale_shift_norm)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(c + skips.pop(), emb, model_channels * mult, use_scale_shift_norm)]
                c = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attend(c, up_heads))
                if level and i == num_res_blocks:
                    layers.append(Upsample(c))
                    ds //= 2
                self.output_blocks.append(Sequence(layers))
        self.out = nn.Sequential(norm32(c), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1))

    def forward(self, x, timesteps, y=None, context=None):
        emb = self.time_embed(sinusoid(timesteps, self.model_channels))
        if self.num_classes > 0:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context)
        out = self.out(h)
        return out[:, :self.in_channels] if self.learned_sigma else out
