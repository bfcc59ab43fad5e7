"""Architecture builders for the model zoo.

Every builder takes JSON-serialisable keyword arguments only and returns a plain
``nn.Module`` built from standard layers, so that

* ``gmn_compiler.compile(builder(**kw), (torch.randn(*input_shape),))`` traces it, and
* ``torch.func.functional_call`` + ``vmap`` can train many copies at once
  (no in-place activations, no data-dependent Python control flow).

The models' ``models.csv`` rows name them as ``"gmn_models.zoo.families:<function>"``, the names
under which :mod:`gmn_models.builders` registers them; :func:`resolve_builder` looks such a
string up in that registry (it never imports what a string names).

Input conventions (batch first): ``mlp`` takes ``[B, D]`` flat vectors, ``deepsets``
``[B, D, 1]`` sets of scalars, ``cnn2d``/``resnet`` ``[B, C, H, W]`` images, ``cnn1d``
``[B, C, L]`` sequences, ``vit`` either (its ``in_shape`` decides: ``[C, H, W]`` or ``[C, L]``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
NORMS = ("none", "batch", "group")


def _act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _norm(name: str, channels: int, dims: int) -> nn.Module:
    """``batch`` (BatchNorm1d/2d), ``group`` (GroupNorm with 2 groups, as the paper's
    Varying-CNN generator; 1 group if ``channels`` is odd) or ``none`` (Identity)."""
    if name == "none":
        return nn.Identity()
    if name == "batch":
        return (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(channels)
    if name == "group":
        return nn.GroupNorm(2 if channels % 2 == 0 else 1, channels)
    raise ValueError(f"unknown norm {name!r}; expected one of {NORMS}")


def mlp(in_features: int = 64, num_classes: int = 10, width: int = 16, depth: int = 2,
        activation: str = "relu") -> nn.Module:
    """``depth`` hidden layers of ``width`` units, then a linear classifier. Input ``[B, D]``."""
    layers: list[nn.Module] = []
    d = in_features
    for _ in range(depth):
        layers += [nn.Linear(d, width), _act(activation)]
        d = width
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


def _conv_stack(dims: int, in_channels: int, width: int, depth: int, kernel_size: int,
                activation: str, norm: str, stride_after_first: int) -> list[nn.Module]:
    conv = nn.Conv1d if dims == 1 else nn.Conv2d
    layers: list[nn.Module] = []
    c = in_channels
    for i in range(depth):
        stride = 1 if i == 0 else stride_after_first
        layers += [conv(c, width, kernel_size, stride=stride, padding=kernel_size // 2,
                        bias=norm != "batch"),
                   _norm(norm, width, dims), _act(activation)]
        c = width
    return layers


def cnn2d(in_channels: int = 1, num_classes: int = 10, width: int = 8, depth: int = 2,
          kernel_size: int = 3, activation: str = "relu", norm: str = "none") -> nn.Module:
    """``depth`` × (conv k×k, 'same' padding → norm → activation), global average pooling,
    linear classifier. Convs before a BatchNorm have no bias. Input ``[B, C, H, W]``."""
    return nn.Sequential(*_conv_stack(2, in_channels, width, depth, kernel_size, activation, norm, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def cnn1d(in_channels: int = 1, num_classes: int = 10, width: int = 8, depth: int = 2,
          kernel_size: int = 5, activation: str = "relu", norm: str = "none") -> nn.Module:
    """1-D CNN: ``depth`` × (conv k, stride 2 after the first layer → norm → activation),
    global average pooling, linear classifier. Input ``[B, C, L]``."""
    return nn.Sequential(*_conv_stack(1, in_channels, width, depth, kernel_size, activation, norm, 2),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(width, num_classes))


class BasicBlock(nn.Module):
    """CIFAR-ResNet basic block: conv3×3 → norm → act → conv3×3 → norm, plus the identity
    (or a 1×1 conv + norm projection when the width or stride changes), then act."""

    def __init__(self, c_in: int, c_out: int, stride: int, activation: str, norm: str):
        super().__init__()
        bias = norm != "batch"
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=bias)
        self.norm1 = _norm(norm, c_out, 2)
        self.act1 = _act(activation)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=bias)
        self.norm2 = _norm(norm, c_out, 2)
        self.act2 = _act(activation)
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=bias), _norm(norm, c_out, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


def resnet(in_channels: int = 1, num_classes: int = 10, width: int = 8, depth: int = 1,
           activation: str = "relu", norm: str = "batch", widen: bool = False) -> nn.Module:
    """Stem conv3×3 → norm → act, ``depth`` basic blocks at ``width`` channels, and if
    ``widen`` one more block going to ``2*width`` with stride 2 (projection shortcut); global
    average pooling, linear classifier. Input ``[B, C, H, W]``."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=norm != "batch"),
                               _norm(norm, width, 2), _act(activation)]
    layers += [BasicBlock(width, width, 1, activation, norm) for _ in range(depth)]
    c = width
    if widen:
        layers.append(BasicBlock(width, 2 * width, 2, activation, norm))
        c = 2 * width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def sinusoidal_encoding(n: int, dim: int) -> torch.Tensor:
    """Fixed ``[n, dim]`` sine/cosine position encoding (transformer style)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(100.0) * torch.arange(0, dim, 2, dtype=torch.float32) / max(dim, 1))
    enc = torch.zeros(n, dim)
    enc[:, 0::2] = torch.sin(pos * freq)
    enc[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return enc


class DeepSets(nn.Module):
    """The input values as a set of ``set_size`` scalar elements (input ``[B, set_size, 1]``):
    φ = a value embedding ``Linear(1, width)`` plus a fixed sinusoidal encoding of each
    element's position (a non-persistent buffer: not in the state dict), then ``depth - 1``
    × (act, linear) and act, per element → mean over the set → ρ (linear, act, linear
    classifier). As the paper's DeepSets family: 1×1 embedding + sinusoidal position encoding."""

    def __init__(self, set_size: int, num_classes: int, width: int, depth: int, activation: str):
        super().__init__()
        self.register_buffer("pos", sinusoidal_encoding(set_size, width), persistent=False)
        self.embed = nn.Linear(1, width)
        phi: list[nn.Module] = []
        for _ in range(depth - 1):
            phi += [_act(activation), nn.Linear(width, width)]
        self.phi = nn.Sequential(*phi, _act(activation))
        self.rho = nn.Sequential(nn.Linear(width, width), _act(activation), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rho(self.phi(self.embed(x) + self.pos).mean(dim=1))


def deepsets(set_size: int = 64, num_classes: int = 10, width: int = 16, depth: int = 2,
             activation: str = "relu") -> nn.Module:
    """See :class:`DeepSets` (input ``[B, set_size, 1]``)."""
    return DeepSets(set_size, num_classes, width, depth, activation)


class Attention(nn.Module):
    """Multi-head self-attention written out timm-style: one qkv linear, softmax(q kᵀ/√d) v,
    projection. Spelled with matmul + softmax rather than ``F.scaled_dot_product_attention``
    because SDPA has no vmap batching rule on CPU (torch 2.13 falls back to a per-member
    loop); the compiler gives both spellings the same graph."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5, dim=-1)
        out = attn @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, activation: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), _act(activation),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding (conv with stride = patch) + learned position embedding, transformer
    blocks, final LayerNorm, mean pooling over tokens, linear classifier.
    ``in_shape`` is ``[C, H, W]`` (2-D patches) or ``[C, L]`` (1-D patches)."""

    def __init__(self, in_shape: list[int], num_classes: int, patch: int, dim: int, depth: int,
                 heads: int, mlp_ratio: int, activation: str):
        super().__init__()
        spatial = in_shape[1:]
        if any(s % patch for s in spatial):
            raise ValueError(f"input {in_shape} is not divisible into patches of {patch}")
        conv = nn.Conv2d if len(spatial) == 2 else nn.Conv1d
        self.patch_embed = conv(in_shape[0], dim, patch, stride=patch)
        tokens = math.prod(s // patch for s in spatial)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, tokens, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, activation) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


def vit(in_shape: list[int] | None = None, num_classes: int = 10, patch: int = 2, width: int = 8,
        depth: int = 1, heads: int = 2, mlp_ratio: int = 2, activation: str = "gelu") -> nn.Module:
    """See :class:`ViT`; ``width`` is the token dimension (default input ``[1, 8, 8]``)."""
    return ViT(list(in_shape or [1, 8, 8]), num_classes, patch, width, depth, heads, mlp_ratio, activation)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp, "cnn2d": cnn2d, "cnn1d": cnn1d, "resnet": resnet, "deepsets": deepsets, "vit": vit,
}


def builder_name(fn: Callable[..., nn.Module]) -> str:
    """``"module:function"`` string stored in ``models.csv``'s ``builder`` column."""
    return f"{fn.__module__}:{fn.__qualname__}"


def resolve_builder(spec: str) -> Callable[..., nn.Module]:
    """The builder registered as ``spec`` (:func:`gmn_models.builders.get_builder`); a
    ``ValueError`` (:class:`~gmn_models.paths.ModelFolderError`) if none is: a string from a
    ``models.csv`` never chooses what is imported."""
    from ..builders import get_builder

    return get_builder(spec)
