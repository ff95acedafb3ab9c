"""Backbones."""

from adaptive_jax.models.resnet import (DEPTHS, SHORTCUT_KINDS, BasicBlock, CifarResNet, ResNetSpec,
                                        Stage, check_images, resnet)

__all__ = ["DEPTHS", "SHORTCUT_KINDS", "BasicBlock", "CifarResNet", "ResNetSpec", "Stage",
           "check_images", "resnet"]
