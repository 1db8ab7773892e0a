r"""Compile time of the distillation step for each teacher -> student pair of families, cold and
from JAX's persistent compilation cache. JSON lines on stdout.

  python -m benchmarks.compile_time [--families=bit,vit,mobilenet_v3] [--resolution=224]
  python -m benchmarks.compile_time --families=bit --tiny     # each family's tiny model, 32 px

A family is one model at 224 px (`SIZES`: BiT-R50x1, ViT-S/16, MobileNetV3-Large; `--tiny`: the
family's `runlocal` model). Per pair, `benchmarks.step_throughput --components=distill_step`
(`configs/distill.py`, 1,000 classes, `--batch_size` images, float32) runs twice, each time in a
new process sharing one new compilation cache: the first compiles every program of the run, the
second loads them from the cache, as a restarted or repeated run does. A line per pair gives the
distillation step's `compile_s` and `cached_compile_s` (lowering and compiling, or loading), and
each process's `ready_s` and `cached_ready_s`: its start-up, from its first import to the step
compiled (imports, models built and initialised, every program compiled or loaded, one warm-up
call); `programs`, the cache's entries after the first process, and `compiled_again`, those the
second added (0: it loaded every program). Then a `summary` with the slowest of each time.
"""

import json
import os
import sys
import tempfile
from typing import Any

from absl import app, flags

import benchmarks

SIZES = {'bit': 'bit:depth=50,width=1', 'vit': 'timm:vit_small_patch16_224',
         'mobilenet_v3': 'timm:mobilenetv3_large_100'}
_FAMILIES = flags.DEFINE_list('families', list(SIZES), 'Families; every ordered pair is timed.')
_RESOLUTION = flags.DEFINE_integer('resolution', 224, 'Input side.')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Images per step.')
_TINY = flags.DEFINE_bool('tiny', False, 'Each family\'s tiny model at 32 px (a check).')


def model(family: str) -> str:
  if not _TINY.value:
    return SIZES[family]
  from big_distill import models  # pylint: disable=g-import-not-at-top
  return str(models.spec(models.FAMILIES[family], **models.FAMILIES[family].tiny))


def distill_step(teacher: str, student: str, cache: str) -> tuple[float, float]:
  """(the distillation step's compile seconds, the process's seconds until it is ready)."""
  resolution = 32 if _TINY.value else _RESOLUTION.value
  command = [sys.executable, '-m', 'benchmarks.step_throughput',
             f'--config=configs/distill.py:teacher=unused,teacher_model={teacher},'
             f'student={student},resolution={resolution}', '--channels=3', '--num_classes=1000',
             '--input=false', '--components=distill_step', '--rounds=1', '--steps=1',
             f'--config.input.batch_size={_BATCH.value}']
  lines = benchmarks.json_lines(command, env={**os.environ, 'JAX_COMPILATION_CACHE_DIR': cache})
  step, = [l for l in lines if l.get('name') == 'distill_step']
  summary, = [l for l in lines if l['measure'] == 'summary']
  return step['compile_s'], summary['ready_s']


def entries(cache: str) -> set[str]:
  """The compiled programs in JAX's compilation cache directory `cache`."""
  return {name for name in os.listdir(cache) if name.endswith('-cache')}


def emit(record: dict[str, Any]) -> None:
  print(json.dumps(record), flush=True)


def main(argv):
  del argv
  lines = []
  for teacher in _FAMILIES.value:
    for student in _FAMILIES.value:
      with tempfile.TemporaryDirectory() as cache:
        compile_s, ready_s = distill_step(model(teacher), model(student), cache)
        programs = entries(cache)
        cached_compile_s, cached_ready_s = distill_step(model(teacher), model(student), cache)
        compiled_again = entries(cache) - programs
      lines.append({'measure': 'pair', 'teacher': model(teacher), 'student': model(student),
                    'compile_s': compile_s, 'cached_compile_s': cached_compile_s,
                    'ready_s': ready_s, 'cached_ready_s': cached_ready_s,
                    'programs': len(programs), 'compiled_again': len(compiled_again),
                    'batch_size': _BATCH.value})
      emit(lines[-1])
  emit({'measure': 'summary', **{f'max_{key}': max(l[key] for l in lines) for key in (
      'compile_s', 'cached_compile_s', 'ready_s', 'cached_ready_s')}})


if __name__ == '__main__':
  app.run(main)
