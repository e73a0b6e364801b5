"""CardioNet: M-mode window quality classifier (Echo2Pheno Module I).

Input  [N, 1, 256, 256] float, already scaled as (x / 255 - 0.5) / 0.5.
Output [N] probability that the window is of good quality (sigmoid inside).

Five blocks of conv3x3(pad 1) -> ReLU -> BatchNorm -> maxpool2 take
256x256x1 down to 8x8x64 = 4096 features, then Linear(4096, 1) -> sigmoid.

The published forward returned a tuple of intermediate maps plus the
probability as its last element; only that last element was ever used, so
this module returns the probability alone. State-dict keys match the
published checkpoint (`conv_blockK.double_conv.{0,2}.*`, `linear.*`).

bn_mode:
  "seed"    -- what the published tool actually ran: it never called eval(),
               so every BatchNorm normalised with the statistics of the one
               window it was given. That is instance normalisation with the
               BN affine parameters; we compute it per sample, so a window's
               result does not depend on what else is in the batch.
  "running" -- ordinary inference with the stored running mean/var.
Call .eval() in both modes (there is no dropout; eval only matters for BN,
and in "seed" mode the per-window statistics are used regardless).
"""
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS = (1, 64, 128, 256, 128, 64)


class CardioNet(nn.Module):
    def __init__(self, bn_mode: Literal["seed", "running"] = "seed"):
        super().__init__()
        if bn_mode not in ("seed", "running"):
            raise ValueError(f"bn_mode must be 'seed' or 'running', got {bn_mode!r}")
        self.bn_mode = bn_mode
        # Attribute names / Sequential indices reproduce the checkpoint keys:
        # double_conv.0 = conv (with bias), .1 = ReLU, .2 = BatchNorm, .3 = pool.
        for k, (c_in, c_out) in enumerate(zip(CHANNELS[:-1], CHANNELS[1:]), start=1):
            block = nn.Module()
            block.double_conv = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(c_out),
                nn.MaxPool2d(2),
            )
            setattr(self, f"conv_block{k}", block)
        self.linear = nn.Linear(8 * 8 * 64, 1)

    def _batch_norm(self, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
        if self.bn_mode == "seed":
            # Per-window statistics (biased variance, like BN in train mode).
            return F.instance_norm(x, weight=bn.weight, bias=bn.bias, eps=bn.eps)
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                            training=False, eps=bn.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k in range(1, len(CHANNELS)):
            conv, relu, bn, pool = getattr(self, f"conv_block{k}").double_conv
            x = pool(self._batch_norm(bn, relu(conv(x))))
        x = torch.flatten(x, 1)  # channel-major, [N, 64*8*8]
        return torch.sigmoid(self.linear(x)).squeeze(1)
