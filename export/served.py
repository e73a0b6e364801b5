"""The modules that are served: each network with the normalisation and post-processing that
run on the server (in the ONNX graph, in torch, in the Triton `gpu-torch` adapter).

Imports torch only (the `gpu-torch` target copies this file and the networks into the
model folder, where echodeploy is not installed).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ServedClipModel(nn.Module):
    """uint8 (N,C,T,H,W) clip -> probability (binary) or value (regression), shape (N,1)."""

    def __init__(self, net: nn.Module, kind: str):
        super().__init__()
        self.net = net
        self.binary = kind == "binary"

    def forward(self, clip: Tensor) -> Tensor:
        logits = self.net(clip.float() / 255.0)
        return torch.sigmoid(logits) if self.binary else logits


class ServedQuality(nn.Module):
    """Grey window 0..255 -> (x/255 - 0.5)/0.5 -> CardioNet -> probability (N, 1)."""

    def __init__(self, net: nn.Module):  # CardioNet
        super().__init__()
        self.net = net

    def forward(self, window: Tensor) -> Tensor:
        return self.net((window / 255.0 - 0.5) / 0.5).unsqueeze(1)


class ServedLvidProfile(nn.Module):
    """Grey window 0..255 -> QuickNAT -> mask (sigmoid >= 0.5 rounded, i.e. logit > 0) -> weighted row sums.

    profile[n, k, c] = sum_r weights[n, k, r] * mask[n, r, c]: with the weights of a nearest
    resize to height H, the per-column pixel counts (k=0) and row-index sums (k=1) of the
    resized mask.
    """

    def __init__(self, net: nn.Module):  # QuickNAT
        super().__init__()
        self.net = net

    def forward(self, window: Tensor, profile_weights: Tensor) -> Tensor:
        mask = (self.net(window) > 0).to(profile_weights.dtype).squeeze(1)
        with torch.autocast(window.device.type, enabled=False):  # row sums stay exact under bf16 autocast
            return torch.bmm(profile_weights, mask)
