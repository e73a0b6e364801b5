"""QuickNAT: LV segmentation of M-mode windows (Echo2Pheno Module I).

Input  [N, 1, 256, 256] float grey values 0..255 (no scaling).
Output [N, 1, 256, 256] raw logits (callers apply sigmoid, then round).

Construction as published: num_channels 1, num_class 1, num_filters 64,
kernel 5x5 (padding 2), stride_conv 1, max-pool 2 / stride 2 (unpooled to each window's max),
no squeeze-excitation, Dropout2d(0.2) after every block except the
classifier (inactive here: the module is meant to be used in eval mode).

Every block ("dense block") is, with one PReLU shared inside the block:
    y1 = conv1(prelu(bn1(x)))                       5x5 -> 64
    y2 = conv2(prelu(bn2(cat[x, y1])))              5x5 -> 64
    out = conv3(prelu(bn3(cat[x, y1, y2])))         1x1 -> 64
Encoders: out -> maxpool (keep out as skip).
Decoders: maxunpool(previous, where skip had its window maxima) -> cat[skip, unpooled] -> dense block.

bn_mode:
  "seed"    -- what the published tool ran: it never called eval(), so each
               BatchNorm used the statistics of the single window it was fed,
               i.e. instance normalisation with the BN affine parameters.
               Computed per sample, so results do not depend on batching.
  "running" -- ordinary inference with the stored running mean/var.
State-dict keys match the published checkpoint's `net_state_dict`.
"""
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

FILTERS = 64
KERNEL = 5


class QuickNAT(nn.Module):
    def __init__(self, bn_mode: Literal["seed", "running"] = "seed", drop_out: float = 0.2):
        super().__init__()
        if bn_mode not in ("seed", "running"):
            raise ValueError(f"bn_mode must be 'seed' or 'running', got {bn_mode!r}")
        self.bn_mode = bn_mode
        # Registration order fixes the state-dict key order of the checkpoint.
        self.encode1 = self._dense_block(in_channels=1)
        self.encode2 = self._dense_block(FILTERS)
        self.encode3 = self._dense_block(FILTERS)
        self.encode4 = self._dense_block(FILTERS)
        self.bottleneck = self._dense_block(FILTERS)
        # Decoders see cat[skip (64), unpooled (64)] = 128 channels.
        self.decode1 = self._dense_block(2 * FILTERS)
        self.decode2 = self._dense_block(2 * FILTERS)
        self.decode3 = self._dense_block(2 * FILTERS)
        self.decode4 = self._dense_block(2 * FILTERS)
        self.classifier = nn.ModuleDict({"conv": nn.Conv2d(FILTERS, 1, kernel_size=1)})
        self.drop_out = nn.Dropout2d(drop_out)

    @staticmethod
    def _dense_block(in_channels: int) -> nn.ModuleDict:
        pad = KERNEL // 2
        return nn.ModuleDict({
            "conv1": nn.Conv2d(in_channels, FILTERS, KERNEL, padding=pad),
            "conv2": nn.Conv2d(in_channels + FILTERS, FILTERS, KERNEL, padding=pad),
            "conv3": nn.Conv2d(in_channels + 2 * FILTERS, FILTERS, kernel_size=1),
            "batchnorm1": nn.BatchNorm2d(in_channels),
            "batchnorm2": nn.BatchNorm2d(in_channels + FILTERS),
            "batchnorm3": nn.BatchNorm2d(in_channels + 2 * FILTERS),
            "prelu": nn.PReLU(),  # one slope shared by all three steps
        })

    def _batch_norm(self, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
        if self.bn_mode == "seed":
            # Per-window statistics (biased variance, like BN in train mode).
            return F.instance_norm(x, weight=bn.weight, bias=bn.bias, eps=bn.eps)
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                            training=False, eps=bn.eps)

    def _dense(self, block: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
        act = block["prelu"]
        y1 = block["conv1"](act(self._batch_norm(block["batchnorm1"], x)))
        x_y1 = torch.cat([x, y1], dim=1)
        y2 = block["conv2"](act(self._batch_norm(block["batchnorm2"], x_y1)))
        x_y1_y2 = torch.cat([x, y1, y2], dim=1)
        out = block["conv3"](act(self._batch_norm(block["batchnorm3"], x_y1_y2)))
        return self.drop_out(out)

    def _encode(self, block, x):
        skip = self._dense(block, x)
        return F.max_pool2d(skip, kernel_size=2, stride=2), skip

    @staticmethod
    def _max_unpool(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """F.max_unpool2d(x, indices of F.max_pool2d(skip, 2, 2)) without the indices.

        Each value of x goes back to the position of its window's maximum in skip, the first
        one in row-major order on ties (as max-pool's indices do), zeros elsewhere. Built from
        comparisons only: the indices output of ONNX MaxPool (and torch's per-plane offsets,
        exported as a second 1x1 MaxPool) has no optimised kernel in OpenVINO, where it ran
        as a reference implementation for 60% of QuickNAT's time (docs/BENCHMARKS.md).
        """
        n, c, h, w = skip.shape
        corners = [skip[:, :, dy::2, dx::2] for dy in (0, 1) for dx in (0, 1)]  # each window's 4 values
        top = torch.maximum(torch.maximum(corners[0], corners[1]), torch.maximum(corners[2], corners[3]))
        first = corners[0] == top
        second = (corners[1] == top) & ~first
        third = (corners[2] == top) & ~(first | second)
        fourth = ~(first | second | third)
        zero = torch.zeros_like(x)
        placed = [torch.where(at, x, zero) for at in (first, second, third, fourth)]
        rows = [torch.stack(placed[:2], -1), torch.stack(placed[2:], -1)]  # (n, c, h/2, w/2, dx)
        return torch.stack(rows, 3).reshape(n, c, h, w)  # (n, c, h/2, dy, w/2, dx)

    def _decode(self, block, x, skip):
        return self._dense(block, torch.cat([skip, self._max_unpool(x, skip)], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1, skip1 = self._encode(self.encode1, x)     # 256 -> 128
        e2, skip2 = self._encode(self.encode2, e1)    # 128 -> 64
        e3, skip3 = self._encode(self.encode3, e2)    # 64 -> 32
        e4, skip4 = self._encode(self.encode4, e3)    # 32 -> 16
        b = self._dense(self.bottleneck, e4)                # 16
        # The published net applies its decoders in the order 4, 1, 2, 3: the
        # attribute names do not follow depth. Shapes force the pairing below
        # (decode4 with the deepest skip, decode3 with the shallowest).
        d = self._decode(self.decode4, b, skip4)      # 16 -> 32
        d = self._decode(self.decode1, d, skip3)      # 32 -> 64
        d = self._decode(self.decode2, d, skip2)      # 64 -> 128
        d = self._decode(self.decode3, d, skip1)      # 128 -> 256
        return self.classifier["conv"](d)                   # logits
