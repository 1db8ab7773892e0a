"""Weights from the files people have, and the architecture they say: the one entry point for
teachers (`config.teachers[i].checkpoint`), the student's initialisation (`config.student.init`),
`convert`, `evaluate` and `predict`.

Formats: a run's workdir (or its `checkpoints/`); `.npz` files (BiT's, big_vision's); timm state
dicts (`.safetensors`, read with `safetensors.numpy` without torch; `.pth`/`.pt`/`.bin` only where
torch is installed, read with `torch.load(weights_only=True)`). Nothing is ever unpickled into
arbitrary objects (`.npz` files are read with `allow_pickle=False`). Which family and layout a file
holds is asked of the family records (`family.Layout.matches`); each family's module converts its
layouts.

A file that does not fit the model is bad input naming the first mismatching key and both shapes;
a head for another class count is replaced by a zero head where `allow_new_head` (fine-tuning,
`student.init`) and refused otherwise (a teacher must predict the dataset's classes). A damaged or
foreign file is bad input in one line naming it.
"""

import io
import json
import os
import struct
import zipfile
from typing import Any, Mapping

from etils import epath
from flax import traverse_util
import flax.linen as nn
import jax
import numpy as np

from big_distill import checkpoint, errors, models, workdir as workdir_lib
from big_distill.models import family as family_lib

Variables = family_lib.Variables
SUFFIXES = tuple(dict.fromkeys(s for f in models.FAMILIES.values() for l in f.layouts
                               for s in l.suffixes))


def check_exists(path: str, key: str) -> None:
  """Bad input unless `path` (the value of config `key`) is set and exists."""
  if not path:
    raise errors.BadInput(f'{key} is not set: give a weights file ({", ".join(SUFFIXES)}) or a '
                          'run\'s workdir.')
  if not epath.Path(path).exists():
    raise errors.BadInput(f'{key} {path!r} does not exist.')


def _suffix(path: str) -> str:
  suffix = os.path.splitext(os.fspath(path))[1]
  if suffix not in SUFFIXES:
    raise errors.BadInput(f'{path}: unknown weights format {suffix!r}; use a .npz (BiT or '
                          'big_vision), .safetensors or .pth (timm) file, or a run\'s workdir.')
  return suffix


def _unreadable(path: str, error: Exception) -> errors.BadInput:
  kind = {'.npz': 'a NumPy .npz archive', '.safetensors': 'a safetensors file'}.get(
      os.path.splitext(path)[1], 'a PyTorch state dict of tensors alone')
  return errors.BadInput(f'Cannot read {path} as {kind} ({type(error).__name__}): the file is '
                         'truncated, damaged or of another kind.')


def read_arrays(path: str) -> dict[str, np.ndarray]:
  """The named arrays of a weights file (see the module docstring for the formats)."""
  suffix = _suffix(path)
  try:
    if suffix == '.npz':
      with epath.Path(path).open('rb') as file, np.load(file, allow_pickle=False) as f:
        return {key: f[key] for key in f.files}
    if suffix == '.safetensors':
      from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
      return dict(safetensors_numpy.load(epath.Path(path).read_bytes()))
    state = _torch_state(path)
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, 'numpy')}
  except errors.BadInput:
    raise
  except Exception as e:  # Truncated or garbled files: zip, safetensors, pickle errors.
    raise _unreadable(path, e) from None


def _torch_state(path: str, **kwargs: Any) -> Mapping[str, Any]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.BadInput(f'{path} is a PyTorch file, which needs torch; convert it to '
                          '.safetensors, or install torch.') from None
  state = torch.load(path, map_location='cpu', weights_only=True, **kwargs)
  state = state.get('state_dict', state.get('model', state)) if isinstance(state, dict) else None
  if not isinstance(state, dict):
    raise errors.BadInput(f'{path} holds no state dict (a mapping of names to tensors).')
  return state


def read_shapes(path: str) -> dict[str, tuple[int, ...]]:
  """The names and shapes of a weights file's arrays, without reading the arrays: `.npz` members'
  `.npy` headers (NumPy's format), the `.safetensors` JSON header (its documented layout: an
  8-byte little-endian length, then the header), a torch file memory-mapped."""
  suffix = _suffix(path)
  try:
    if suffix == '.npz':
      shapes = {}
      with epath.Path(path).open('rb') as file, zipfile.ZipFile(file) as archive:
        for name in archive.namelist():
          with archive.open(name) as member:
            read_header = (np.lib.format.read_array_header_1_0
                           if np.lib.format.read_magic(member) == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shapes[name.removesuffix('.npy')] = read_header(member)[0]
      return shapes
    if suffix == '.safetensors':
      with epath.Path(path).open('rb') as f:
        length, = struct.unpack('<Q', f.read(8))
        header = json.loads(f.read(length))
      return {k: tuple(v['shape']) for k, v in header.items() if k != '__metadata__'}
    return {k: tuple(v.shape) for k, v in _torch_state(path, mmap=True).items()
            if hasattr(v, 'shape')}
  except errors.BadInput:
    raise
  except Exception as e:
    raise _unreadable(path, e) from None


def write_arrays(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes `arrays` (float32) to `path` as `.npz` or `.safetensors`, by its suffix."""
  arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}
  target = epath.Path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  if target.suffix == '.npz':
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    target.write_bytes(buffer.getvalue())
  else:
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    target.write_bytes(safetensors_numpy.save(arrays))


def find_layout(path: str, shapes: Mapping[str, tuple[int, ...]],
                family: family_lib.Family | None = None
                ) -> tuple[family_lib.Family, family_lib.Layout]:
  """The family and layout of a weights file's `shapes` (of `family`'s layouts where given)."""
  suffix = _suffix(path)
  found = [(f, l) for f in models.FAMILIES.values() for l in f.layouts
           if suffix in l.suffixes and l.matches(shapes)]
  ours = [(f, l) for f, l in found if family is None or f is family]
  if ours:
    return ours[0]
  if found:
    other, layout = found[0]
    raise errors.BadInput(f'{path} holds a {other.name} model ({layout.name} layout), which a '
                          f'{family.name} model cannot load; set the entry\'s model to the file\'s '
                          'architecture, or leave it empty to take the file\'s.')
  layouts = ', '.join(f'{f.name} ({"/".join(l.name for l in f.layouts)})'
                      for f in models.FAMILIES.values())
  raise errors.BadInput(f'{path} holds no weights layout big_distill reads: {layouts}.')


def run_directory(path: str) -> epath.Path | None:
  """The run a directory is or holds the checkpoints of (its `config.json`), None otherwise."""
  p = workdir_lib.path(path)
  for run in (p, p.parent if p.name == workdir_lib.CHECKPOINTS else None):
    if run is not None and (run / workdir_lib.CONFIG).exists():
      return run
  return None


def spec_of(path: str, where: str) -> models.Spec:
  """The architecture a checkpoint says: a run's student (its `config.json`), or the family,
  layout and sizes of a weights file's arrays (`family.Layout.arguments`; the family's default
  input normalisation). `where` names the config entry in messages."""
  check_exists(path, where)
  if epath.Path(path).is_dir():
    run = run_directory(path)
    if run is None:
      raise errors.BadInput(f'{where} {path!r} is a directory without a big_distill run (no '
                            f'{workdir_lib.CONFIG}); give a run\'s workdir or a weights file.')
    return models.resolve(workdir_lib.read_config(str(run))['student'],
                          f'{where} (the student of {run})')
  shapes = read_shapes(path)
  found, layout = find_layout(path, shapes)
  return models.spec(found, **layout.arguments(shapes))


def load_variables(path: str, family: family_lib.Family, model: nn.Module, abstract: Variables,
                   *, allow_new_head: bool = False) -> Variables:
  """The variables (`{'params': ...}`, plus `batch_stats` for BatchNorm models; host arrays) of
  `model`, of `family`, from `path`, checked against `abstract` (the model's `jax.eval_shape`d
  init at the run's resolution and channels). Unreadable files are bad input too."""
  if epath.Path(path).is_dir():
    return _from_run(path, model, abstract, allow_new_head)
  arrays = read_arrays(path)
  layout = find_layout(path, {k: v.shape for k, v in arrays.items()}, family)[1]
  return _read(path, arrays, layout, model, abstract, allow_new_head)


def _from_run(path: str, model: nn.Module, abstract: Variables,
              allow_new_head: bool) -> Variables:
  try:
    variables, step, _ = checkpoint.read_variables(path, 'latest')
  except errors.BadInput:
    raise
  except Exception as e:  # Truncated or garbled orbax files.
    raise errors.BadInput(f'Cannot read the checkpoint {path} ({type(e).__name__}: '
                          f'{(str(e).strip().splitlines() or [""])[0][:200]}).') from None
  params = variables['params']
  if allow_new_head and params['head']['bias'].shape != (model.num_classes,):
    variables = {**variables, 'params': family_lib.with_zero_head(
        params, abstract['params']['head']['kernel'].shape)}
  check_classes(f'{path} (step {step})', variables['params']['head']['bias'].shape[0], model)
  check_fits(variables, abstract, f'Checkpoint {path} (step {step})')
  return variables


def _read(path: str, arrays: Mapping[str, np.ndarray], layout: family_lib.Layout,
          model: nn.Module, abstract: Variables, allow_new_head: bool) -> Variables:
  classes = layout.head_classes({k: v.shape for k, v in arrays.items()})
  new_head = allow_new_head and classes != model.num_classes
  if classes is not None and not new_head:
    check_classes(path, classes, model)
  return layout.read(arrays, model, abstract, skip_head=new_head, source=path)


def model_from_file(path: str, spec: models.Spec | None, *, channels: int = 3,
                    resolution: int | None = None
                    ) -> tuple[models.Spec, nn.Module, Variables, int]:
  """(spec, model, variables, input side) of a weights file: its architecture `spec` (None: what
  the file says), the class count of its head; the side is `resolution`, else the file's own (a
  ViT's position-embedding grid), else 224."""
  check_exists(path, 'The weights file')
  arrays = read_arrays(path)
  shapes = {k: v.shape for k, v in arrays.items()}
  found, layout = find_layout(path, shapes, spec and spec.family)
  spec = spec or models.spec(found, **layout.arguments(shapes))
  classes = layout.head_classes(shapes)
  if classes is None:
    raise errors.BadInput(f'{path} has no classifier head ({layout.name} layout).')
  model = spec.create(classes)
  side = resolution or layout.side(shapes) or 224
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            np.zeros((1, side, side, channels), np.float32))
  return spec, model, _read(path, arrays, layout, model, abstract, False), side


def check_fits(variables: Any, abstract: Any, source: str) -> None:
  """Bad input naming the first key whose shape differs between `variables` and the model's."""
  got = traverse_util.flatten_dict(variables, sep='/')
  want = traverse_util.flatten_dict(abstract, sep='/')
  for key in sorted(set(got) | set(want)):
    shapes = [tuple(t[key].shape) if key in t else 'nothing' for t in (got, want)]
    if shapes[0] != shapes[1]:
      raise errors.BadInput(f'{source} does not fit the configured model: {key}: checkpoint has '
                            f'{shapes[0]}, model expects {shapes[1]}.')


def check_classes(source: str, classes: int, model: nn.Module) -> None:
  if classes != model.num_classes:
    raise errors.BadInput(f'{source} predicts {classes} classes, but the dataset has '
                          f'{model.num_classes}; use a model trained on this dataset\'s classes.')
