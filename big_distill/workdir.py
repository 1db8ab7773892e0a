"""A run's directory: the one owner of its file names and layout.

  WORKDIR/config.json                        the resolved config (`write_config`)
  WORKDIR/data.json                          what it trains on: classes, channels, examples
  WORKDIR/metrics.jsonl                      one JSON object per logged step (`metrics.py`)
  WORKDIR/log.txt                            the full absl log (`console.log_to`)
  WORKDIR/events.out.tfevents.*              TensorBoard (clu)
  WORKDIR/checkpoints/<step>/                orbax: params, opt_state, metrics (`checkpoint.py`)
  WORKDIR/corrupt_checkpoints/<step>-<time>  unreadable checkpoints, set aside at a restart
  WORKDIR/teacher_logits.npy{,.json}         the fixed teacher's logits (teacher_logits_cache)

A workdir may be local or remote (`gs://...`): every path is an `etils.epath.Path`.
"""

import json
import os
import time
from typing import Any

from etils import epath
import ml_collections

from big_distill import errors

CONFIG = 'config.json'
DATA = 'data.json'
METRICS = 'metrics.jsonl'
LOG = 'log.txt'
CHECKPOINTS = 'checkpoints'
CORRUPT_CHECKPOINTS = 'corrupt_checkpoints'
TEACHER_LOGITS = 'teacher_logits.npy'  # The configs' default `teacher_logits_cache`.

# Keys that change how a run executes or what it logs, not what it computes: a workdir may
# continue with other values.
RUNTIME_KEYS = ('mesh.', 'kernels.', 'profile.', 'log_every_steps', 'eval_every_steps',
                'checkpoint_every_steps', 'keep_checkpoints', 'keep_best', 'input.prefetch',
                'input.data_dir', 'remat')


def is_remote(p: str | os.PathLike) -> bool:
  """Whether `p` names a remote path (`gs://...`: no local file locks, memory maps or logs)."""
  return '://' in os.fspath(p)


def path(workdir: str | os.PathLike) -> epath.Path:
  """`workdir` as an absolute `epath.Path` (local, or remote such as `gs://bucket/dir`)."""
  p = epath.Path(workdir)
  return p if p.is_absolute() else p.absolute()


def checkpoints(workdir: str | os.PathLike) -> epath.Path:
  """The directory of a run's orbax checkpoints."""
  return path(workdir) / CHECKPOINTS


def find_checkpoints(source: str | os.PathLike) -> epath.Path:
  """The checkpoints of another run (a teacher, `student.init`, `export`), given its workdir or
  its checkpoints directory."""
  p = path(source)
  return p / CHECKPOINTS if (p / CHECKPOINTS).is_dir() else p


def corrupt_checkpoint(workdir: str | os.PathLike, step: int) -> epath.Path:
  """Where an unreadable checkpoint of `step` is set aside (never deleted)."""
  return path(workdir) / CORRUPT_CHECKPOINTS / f'{step}-{int(time.time())}'


def teacher_logits(workdir: str | os.PathLike, cache: str) -> epath.Path:
  """`config.teacher_logits_cache`: relative to the workdir, or any absolute path."""
  return path(workdir) / epath.Path(cache)


def log_file(workdir: str | os.PathLike, process: int = 0) -> epath.Path:
  return path(workdir) / (LOG if process == 0 else f'log.{process}.txt')


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  """{'a.b': v, 'teachers[0].depth': v, ...}; values other than scalars become strings."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    elif isinstance(v, (list, tuple)) and v and all(isinstance(x, dict) for x in v):
      for i, x in enumerate(v):
        out.update(flatten(x, f'{prefix}{k}[{i}].'))
    else:
      out[f'{prefix}{k}'] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out


def check_writable(target: str | os.PathLike, flag: str) -> None:
  """Refuses a local path that cannot be created or written, creating nothing: its nearest
  existing ancestor must be a writable directory. Remote paths are not checked here."""
  p = path(target)
  if is_remote(p):
    return
  existing = p
  while not existing.exists():
    existing = existing.parent
  if not existing.is_dir():
    reason = f'{existing} is a file'
  elif not os.access(existing, os.W_OK | os.X_OK):
    reason = f'{existing} is not writable'
  else:
    return
  raise errors.BadInput(f'Cannot write to {flag}={target} ({reason}); choose a writable '
                        'directory.')


def check(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir that holds a run of another config (the device mesh and the other
  `RUNTIME_KEYS` may differ), or that cannot be written. Reads only."""
  stored_path = path(workdir) / CONFIG
  if stored_path.exists() and not config.allow_config_change:
    stored = flatten(json.loads(stored_path.read_text()))
    new = flatten(config_json(config))
    changed = sorted(k for k in set(stored) | set(new) if stored.get(k) != new.get(k) and
                     k != 'allow_config_change' and not k.startswith(RUNTIME_KEYS))
    if changed:
      raise errors.BadInput(
          f'{workdir} holds a run of another config (differs in: {", ".join(changed[:8])}'
          f'{", ..." if len(changed) > 8 else ""}); use a new --workdir, or pass '
          '--config.allow_config_change=True to continue it.')
  check_writable(workdir, '--workdir')


def with_stored_models(config: ml_collections.ConfigDict,
                       workdir: str) -> ml_collections.ConfigDict:
  """`config` with the `model` of each entry that names none (to be read from its checkpoint: a
  teacher's, the student's `init`) taken from the run already in `workdir` where that run had the
  same checkpoint: a resumed run builds what it resolved at its start, even once `init` is gone.
  Reads only."""
  p = path(workdir) / CONFIG
  if not p.exists():
    return config
  stored = json.loads(p.read_text())
  pairs = [(config.student, stored.get('student', {}), 'init'),
           *((entry, old, 'checkpoint')
             for entry, old in zip(config.teachers, stored.get('teachers', [])))]
  fill = [i for i, (entry, old, source) in enumerate(pairs)
          if not entry.get('model') and old.get('model') and entry.get(source) == old.get(source)]
  if not fill:
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    entries = [config.student, *config.teachers]
    for i in fill:
      entries[i]['model'] = pairs[i][1]['model']
  return config


def create(workdir: str) -> epath.Path:
  p = path(workdir)
  p.mkdir(parents=True, exist_ok=True)
  return p


def write_json(p: epath.Path, value: Any) -> None:
  """Writes `value` as JSON to `p` atomically: a temporary sibling renamed (a remote object is
  written whole), so a reader never sees half a file."""
  tmp = p.parent / f'.{p.name}.tmp'
  tmp.write_text(json.dumps(value, indent=2, sort_keys=True))
  tmp.replace(p)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  (path(workdir) / CONFIG).write_text(json.dumps(config_json(config), indent=2, sort_keys=True))


def write_data(workdir: str, **info: Any) -> None:
  (path(workdir) / DATA).write_text(json.dumps(info, indent=2, sort_keys=True))


def read_data(workdir: str) -> dict[str, Any] | None:
  """What `write_data` stored; None for runs that predate it."""
  p = path(workdir) / DATA
  return json.loads(p.read_text()) if p.exists() else None


def read_config(workdir: str) -> dict[str, Any]:
  """A run's stored config; a directory that holds no run is bad input."""
  p = path(workdir) / CONFIG
  if not p.exists():
    raise errors.BadInput(f'{workdir} holds no big_distill run (no {CONFIG}).')
  try:
    return json.loads(p.read_text())
  except ValueError as e:
    raise errors.BadInput(f'{p} is not a JSON config ({e}).') from None


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Every record of a run's `metrics.jsonl` (none if it has not logged yet)."""
  p = path(workdir) / METRICS
  if not p.exists():
    return []
  return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def last_metrics(workdir: str) -> dict[str, float]:
  """The newest value of every key in a run's `metrics.jsonl`."""
  latest = {}
  for record in read_metrics(workdir):
    latest.update(record)
  return latest
