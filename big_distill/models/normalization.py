"""Input normalisation per model: the input pipeline gives every model the same image in [-1, 1];
each model maps it to the range its weights were trained on, first thing in its `__call__`, so a
timm teacher and a BiT student see the same crop, each as it expects.

`minus_one_to_one` is the pipeline's own range (BiT, big_vision ViTs, and timm's `*_bit` and
AugReg ViTs, whose mean and std are both 0.5); `imagenet` is torchvision's ImageNet mean and std
(timm's MobileNetV3 and most other timm models). A model of one input channel (grey images) uses
the mean of the three means and of the three stds.
"""

import jax.numpy as jnp

from big_distill import errors

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    'minus_one_to_one': None,
    'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def check(name: str, key: str = 'normalization') -> None:
  if name not in NORMALIZATIONS:
    raise errors.BadInput(f'{key}={name!r} is not a known input normalisation; use one of '
                          f'{", ".join(NORMALIZATIONS)}.')


def normalize(images: jnp.ndarray, name: str) -> jnp.ndarray:
  """`images` in [-1, 1] (NHWC) as a model normalised by `name` expects them."""
  stats = NORMALIZATIONS[name]
  if stats is None:
    return images
  mean, std = (jnp.asarray(s, jnp.float32) for s in stats)
  if images.shape[-1] not in (1, len(mean)):
    raise errors.BadInput(f'Input normalisation {name!r} is for {len(mean)}-channel (or grey) '
                          f'images; these have {images.shape[-1]} channels.')
  if images.shape[-1] == 1:
    mean, std = jnp.mean(mean, keepdims=True), jnp.mean(std, keepdims=True)
  return ((images + 1.0) / 2.0 - mean) / std
