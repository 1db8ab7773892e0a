"""What a model family is: one record (`Family`) per family, kept in the family's own module
(`bit.FAMILY`, `vit.FAMILY`, `mobilenet_v3.FAMILY`) and listed once in the registry
(`models.FAMILIES`), as timm keeps its architectures in one registry.

A record says everything the rest of the code asks of a family: its Flax class, the timm names it
builds and the arguments they stand for (input normalisation included), its weight layouts (each
with a reader, a writer, and the architecture a file of that layout says), and the sizes the
configs use (the demo's teacher and student, the tiny model of `runlocal`). The registry, loading,
`convert`, `export` and the configs ask the record; nothing outside a family's module branches on
its name.

Every family's classifier is `params['head']` (`kernel` [features, classes], `bias` [classes]),
zero-initialised; `with_zero_head` gives parameters a new one, as fine-tuning starts.
"""

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import numpy as np

Variables = dict[str, Any]
Shapes = Mapping[str, tuple[int, ...]]  # A weights file's array names and shapes.
Arrays = Mapping[str, np.ndarray]
NPZ = ('.npz',)
# timm state dicts: `.safetensors` (read without torch), or torch files (`.pth`, ...), read with
# `torch.load(weights_only=True)` where torch is installed.
TIMM = ('.safetensors', '.pth', '.pt', '.bin')
# (arrays, model, abstract variables, *, skip_head, source) -> variables: a layout's reader.
Reader = Callable[..., Variables]
# (variables, model) -> {key: C-contiguous float32 array}: a layout's writer.
Writer = Callable[[Mapping[str, Any], nn.Module], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Layout:
  """A weight layout that a family reads and writes: BiT's `.npz`, big_vision's `.npz`, timm's
  state dict (`.safetensors`, or `.pth` where torch is installed)."""
  name: str  # 'bit', 'big_vision', 'timm'.
  suffixes: tuple[str, ...]  # The files that hold it; the first is the one written.
  matches: Callable[[Shapes], bool]  # Whether a file's keys are this layout's, of this family.
  head_classes: Callable[[Shapes], int | None]  # The class count of the file's head.
  arguments: Callable[[Shapes], dict[str, Any]]  # The architecture the file says.
  read: Reader
  write: Writer
  # The input side a file was made for (a ViT's position-embedding grid), where it says one.
  side: Callable[[Shapes], int | None] = lambda shapes: None

  @property
  def suffix(self) -> str:
    return self.suffixes[0]


@dataclasses.dataclass(frozen=True)
class Family:
  """One model family. `model(**arguments, num_classes=N, dtype=D, remat=R)` builds it (`remat`:
  its blocks `rematerialized`; with `kernels=K`, `kernels.Kernels`, where its class has that
  field); a built model's `architecture()` gives its arguments in full (what two specs are
  compared on) and `frozen(params)` what a frozen teacher precomputes."""
  name: str
  model: type[nn.Module]
  timm_arguments: Callable[[str], dict[str, Any] | None]  # None: not one of this family's names.
  timm_names: str  # The timm names it builds, in words, for messages.
  layouts: tuple[Layout, ...]
  demo_teacher: dict[str, Any]  # The demo's sizes (Fashion-MNIST at 56 px).
  demo_student: dict[str, Any]
  tiny: dict[str, Any]  # `runlocal`'s model of this family, at 32 px.
  # XLA:CPU's scheduler for a train step of a student of this family (`kernels`' 'auto').
  cpu_scheduler: str = 'default'

  def layout(self, name: str) -> Layout | None:
    return next((l for l in self.layouts if l.name == name), None)

  def writer(self, suffix: str) -> Layout | None:
    """The layout written to files with `suffix`, if the family has one."""
    return next((l for l in self.layouts if l.suffix == suffix), None)


def rematerialized(block: type[nn.Module], remat: bool,
                   static_argnums: tuple[int, ...] = ()) -> type[nn.Module]:
  """`block`, or with `remat` the same block (same parameters) whose activations the backward
  pass recomputes from its input instead of keeping them (`nn.remat`): less memory for the
  student's training step, one more forward pass of each block. `static_argnums`: its Python
  arguments (counting `self` as 0), e.g. a `train` flag. Forward-only calls (evaluation, frozen
  teachers) keep no activations for a backward pass, so there it changes nothing."""
  return nn.remat(block, static_argnums=static_argnums) if remat else block


def with_zero_head(params: Mapping[str, Any], shape: tuple[int, int]) -> dict[str, Any]:
  """A copy of `params` with a zero head of kernel `shape` ([features, classes]; the model's own
  head shape, as fine-tuning starts); everything else is shared."""
  params = dict(params.unfreeze() if hasattr(params, 'unfreeze') else params)
  params['head'] = {'kernel': np.zeros(shape, np.float32), 'bias': np.zeros(shape[1:], np.float32)}
  return params
