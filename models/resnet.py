"""ResNet-18..152 with torchvision's exact state_dict keys, shapes and init, plus input normalisation.

`small_input=True` swaps the stem for a 3x3 stride-1 conv without max-pool (32x32 images);
`resnet_tiny` is the same code at width 16 with one block per stage, for tests and the demo.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn, Tensor

from models.normalize import IDENTITY_MEAN, IDENTITY_STD, Normalize


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place, as torchvision's (one activation-sized allocation less per block)
        return self.relu(out)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), as torchvision's."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity  # in place, as torchvision's (one activation-sized allocation less per block)
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """normalize -> stem -> layer1..4 (widths w, 2w, 4w, 8w) -> global average pool -> fc."""

    def __init__(self, block: Block, layers: Sequence[int], num_classes: int = 1000, *, width: int = 64,
                 small_input: bool = False, mean: Sequence[float] = IDENTITY_MEAN,
                 std: Sequence[float] = IDENTITY_STD, zero_init_residual: bool = False) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet needs 4 stage depths, got {list(layers)}")
        self.small_input = small_input
        self.normalize = Normalize(mean, std)
        self.inplanes = width
        if small_input:
            self.conv1 = _conv3x3(3, width)
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        self._init_weights(zero_init_residual)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        stage = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # torchvision's scheme; fc keeps nn.Linear's default init.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual branch starts as zero, so every block starts as the identity.
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.normalize(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


# ---------------------------------------------------------------------------- constructors

def _resnet(block: Block, layers: Sequence[int], num_classes: int, width: int, small_input: bool,
            mean: Sequence[float], std: Sequence[float], zero_init_residual: bool) -> ResNet:
    return ResNet(block, layers, num_classes, width=width, small_input=small_input, mean=mean, std=std,
                  zero_init_residual=zero_init_residual)


def resnet18(num_classes: int = 1000, *, small_input: bool = False, mean: Sequence[float] = IDENTITY_MEAN,
             std: Sequence[float] = IDENTITY_STD, zero_init_residual: bool = False) -> ResNet:
    return _resnet(BasicBlock, (2, 2, 2, 2), num_classes, 64, small_input, mean, std, zero_init_residual)


def resnet34(num_classes: int = 1000, *, small_input: bool = False, mean: Sequence[float] = IDENTITY_MEAN,
             std: Sequence[float] = IDENTITY_STD, zero_init_residual: bool = False) -> ResNet:
    return _resnet(BasicBlock, (3, 4, 6, 3), num_classes, 64, small_input, mean, std, zero_init_residual)


def resnet50(num_classes: int = 1000, *, small_input: bool = False, mean: Sequence[float] = IDENTITY_MEAN,
             std: Sequence[float] = IDENTITY_STD, zero_init_residual: bool = False) -> ResNet:
    return _resnet(Bottleneck, (3, 4, 6, 3), num_classes, 64, small_input, mean, std, zero_init_residual)


def resnet101(num_classes: int = 1000, *, small_input: bool = False, mean: Sequence[float] = IDENTITY_MEAN,
              std: Sequence[float] = IDENTITY_STD, zero_init_residual: bool = False) -> ResNet:
    return _resnet(Bottleneck, (3, 4, 23, 3), num_classes, 64, small_input, mean, std, zero_init_residual)


def resnet152(num_classes: int = 1000, *, small_input: bool = False, mean: Sequence[float] = IDENTITY_MEAN,
              std: Sequence[float] = IDENTITY_STD, zero_init_residual: bool = False) -> ResNet:
    return _resnet(Bottleneck, (3, 8, 36, 3), num_classes, 64, small_input, mean, std, zero_init_residual)


def resnet_tiny(num_classes: int = 10, *, small_input: bool = True, mean: Sequence[float] = IDENTITY_MEAN,
                std: Sequence[float] = IDENTITY_STD, zero_init_residual: bool = False) -> ResNet:
    """BasicBlock, one block per stage, width 16 (~0.3M parameters): tests and the demo."""
    return _resnet(BasicBlock, (1, 1, 1, 1), num_classes, 16, small_input, mean, std, zero_init_residual)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap `model.fc` for a fresh nn.Linear (default init) on the old head's device/dtype; returns the model.

    Call it before wrapping the model in DistributedDataParallel, which fixes its parameter list.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    old = model.fc
    if not isinstance(old, nn.Linear):
        raise TypeError(f"{type(model).__name__}.fc is {type(old).__name__}, expected nn.Linear")
    model.fc = nn.Linear(old.in_features, num_classes, bias=old.bias is not None,
                         device=old.weight.device, dtype=old.weight.dtype)
    return model
