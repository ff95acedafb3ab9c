"""The same CIFAR ResNet in PyTorch, for side-by-side peer timings (benchmark extra only).

Architecture matches adaptive_jax.models.resnet exactly: 3x3 stem, three stages of basic blocks
(16/32/64), projection (1x1 conv + BN) or pad shortcut at stage transitions, average pool, linear.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.changes_shape = stride != 1 or cin != cout
        self.shortcut_kind = shortcut
        self.extra = cout - cin
        if self.changes_shape and shortcut == "projection":
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def shortcut(self, x):
        if not self.changes_shape:
            return x
        if self.shortcut_kind == "projection":
            return self.proj(x)
        x = F.avg_pool2d(x, 2)
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.shortcut(x) + self.bn2(self.conv2(y)))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 20, num_classes: int = 10, shortcut: str = "projection"):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        layers, cin = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(cin, width, stride if i == 0 else 1, shortcut))
                cin = width
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))

    def forward_plan(self, x, plan, skip: bool):
        """Under a block plan (sequence of bools shared by the batch). skip=False is what the
        reference implementations do (every block runs, its output multiplied by the bit);
        skip=True leaves skipped blocks out of the Python loop."""
        x = self.stem(x)
        for block, on in zip(self.blocks, plan):
            if skip:
                x = block(x) if on else block.shortcut(x)
            else:
                shortcut = block.shortcut(x)
                x = shortcut + float(on) * (block(x) - shortcut)
        return self.head(x.mean(dim=(2, 3)))


def resnet(depth: int = 20, num_classes: int = 10, shortcut: str = "projection") -> CifarResNet:
    return CifarResNet(depth, num_classes, shortcut)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    print(parameter_count(resnet(20)), torch.__version__)
