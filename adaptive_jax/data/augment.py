"""On-device augmentation and normalisation: pure, jit-friendly functions of uint8 batches.

Running these inside the compiled train step means the host only slices uint8 arrays, so input
never starves the two cores, and the result depends only on the key (deterministic per seed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize(images_u8: jax.Array, mean, std) -> jax.Array:
    """uint8 (B, H, W, C) -> float32, per-channel standardised: (x / 255 - mean) / std."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (images_u8.astype(jnp.float32) / 255.0 - mean) / std


def random_crop(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """Zero-pads each side by `padding`, then crops a random window of the original size per image."""
    b, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def augment(key: jax.Array, images_u8: jax.Array, mean, std, padding: int = 4) -> jax.Array:
    """Standard CIFAR training augmentation: pad-and-crop, horizontal flip, normalisation.

    Crops the uint8 images (zero padding, as torchvision's RandomCrop(32, padding=4)) before
    normalising, so padded pixels are black, exactly like the reference recipes.
    """
    crop_key, flip_key = jax.random.split(key)
    images = random_flip(flip_key, random_crop(crop_key, images_u8, padding))
    return normalize(images, mean, std)
