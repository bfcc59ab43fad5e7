"""Architectures written with plain ``torch.nn``: an LSTM language model and a UNet."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from real_models.base import VOCAB, image, randomized, register, token_ids


class LSTMLanguageModel(nn.Module):
    """Embedding -> 2-layer LSTM -> tied-free output projection (the classic word-level LM)."""

    def __init__(self, vocab: int = VOCAB, width: int = 12, hidden: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, hidden, num_layers=2, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(ids))
        return self.out(h)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    """Two-level UNet: max-pool encoder, bilinear upsampling decoder, skip concatenations."""

    def __init__(self, channels: int = 3, width: int = 4, classes: int = 2):
        super().__init__()
        self.down0, self.down1 = _double_conv(channels, width), _double_conv(width, 2 * width)
        self.bottom = _double_conv(2 * width, 2 * width)
        self.up1, self.up0 = _double_conv(4 * width, width), _double_conv(2 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.down0(x)
        s1 = self.down1(F.max_pool2d(s0, 2))
        b = self.bottom(F.max_pool2d(s1, 2))
        u1 = self.up1(torch.cat([F.interpolate(b, scale_factor=2, mode="bilinear"), s1], 1))
        u0 = self.up0(torch.cat([F.interpolate(u1, scale_factor=2, mode="bilinear"), s0], 1))
        return self.head(u0)


@register("LSTM language model", "torch", "nn.LSTM")
def lstm_lm():
    return randomized(LSTMLanguageModel()), (token_ids(),)


@register("UNet", "torch", "nn.Conv2d + F.interpolate")
def unet():
    return randomized(UNet()), (image(16),)
