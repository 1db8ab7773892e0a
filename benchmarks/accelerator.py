r"""The accelerator check: on one GPU or TPU chip, in under 8 minutes, one JSON file saying how fast
the paper's recipe runs there. On a CPU, `--tiny` runs the same cases with tiny models (a test).

  python -m benchmarks.accelerator --out=accelerator.json [--peak_tflops=989] [--batch_size=128]
  python -m benchmarks.accelerator --out=/tmp/accelerator.json --tiny
  python -m benchmarks.accelerator --out=rest.json --cases=vit_b16,mobilenet_v3   # some cases

Cases, all at 224 px in bfloat16 with random weights (`configs/imagenet_funmatch.py`, 1,000
classes), `--batch_size` images per step on one chip:

- `paper`: BiT-M-R152x2 -> BiT-R50x1, the paper's pair, also replayed from a reinforcement
  (`distill_step_replayed`: the views rebuilt, no teacher; `replayed_over_distill_step`, the
  issue's goal >= 3x);
- `vit_b16`: ViT-B/16 -> BiT-R50x1, once per attention implementation (`config.kernels.attention`);
- `mobilenet_v3`: BiT-R50x1 -> MobileNetV3-Large, once per depthwise-convolution implementation
  (`config.kernels.depthwise`).

Each case is one `benchmarks.step_throughput` process (so that the device's peak memory is the
case's own) timing the teacher's forward pass, the student's train step and the distillation step,
then the distillation step of the switch's other implementations (their states built after the
case's are freed).
Per case the file gives images/s of each part, the distillation step's fraction of the chip's
bfloat16 peak (`--peak_tflops`, else the device's entry in `PEAK_TFLOPS`), step efficiency (the
step's time over its parts'), each program's compile seconds, XLA's memory figure of the compiled
step and the device's peak bytes in use. `kernels` sets each switch's implementations side by side
(distillation images/s, or the error of one that failed; and which one `auto` picks on this
backend, the one its case runs). `input`: the ImageNet config's input pipeline on a synthetic
JPEG stand-in (`--standin` images of 384x512), decoding with the machine's cores, against the
paper case's step (`input_over_step` >= 1: it keeps up); it needs TensorFlow, and says so where
it is missing.

The file is written again after each case (`complete` false until the last), so a run stopped by
a time limit keeps the cases it finished, each with its `seconds`; `--cases` runs the others. A
case whose process fails (its memory, a compile error) gets its `error` (the end of its stderr),
and the next case runs.
"""

import importlib.util
import json
import subprocess
import sys
import time
from typing import Any

from absl import flags

import benchmarks
from big_distill import cli, errors
from big_distill.models import kernels  # JAX imported, no backend started: the cases have the chip.

_OUT = flags.DEFINE_string('out', None, 'The JSON file to write.', required=True)
_TINY = flags.DEFINE_bool('tiny', False, 'Tiny models at 32 px, 4 images: a check on a CPU.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Images per step.')
_PEAK = flags.DEFINE_float('peak_tflops', 0.0, 'The chip\'s dense bfloat16 peak in TFLOP/s '
                           '(default: `PEAK_TFLOPS` by device kind).')
_STANDIN = flags.DEFINE_integer('standin', 2048, 'JPEGs in the input pipeline\'s stand-in.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timings per part (the median).')
_STEPS = flags.DEFINE_integer('steps', 5, 'Calls per timing.')

# Dense bfloat16 TFLOP/s per JAX device, by the start of `device_kind` (vendors' data sheets; a TPU
# v3's devices are its cores, half a chip).
PEAK_TFLOPS = {'NVIDIA H100': 989.0, 'NVIDIA H200': 989.0, 'NVIDIA A100': 312.0,
               'NVIDIA L4': 121.0, 'TPU v3': 61.5, 'TPU v4': 275.0, 'TPU v5 lite': 197.0,
               'TPU v5p': 459.0, 'TPU v6 lite': 918.0}
VIT_B16 = 'timm:vit_base_patch16_224.augreg2_in21k_ft_in1k'
R50 = 'bit:depth=50,width=1'
# name: (config arguments, the kernel switch it sets side by side, or None).
CASES = {
    'paper': ('', None),
    'vit_b16': (f'teacher_model={VIT_B16}', 'attention'),
    'mobilenet_v3': (f'teacher_model={R50},student=timm:mobilenetv3_large_100', 'depthwise'),
}
_CASES = flags.DEFINE_list('cases', list(CASES), 'The cases to run (`CASES`), in this order.')
PARTS = ('teacher_forward', 'student_step', 'distill_step')
REPLAYED = 'distill_step_replayed'  # Timed for the paper case besides `PARTS`.


def step_throughput(arguments: str, *flags_: str, parts: tuple[str, ...] = PARTS
                    ) -> list[dict[str, Any]]:
  """The JSON lines of one `benchmarks.step_throughput` process on the ImageNet config, timing
  `parts` (and the distillation step of the kernels that `flags_` name, after them)."""
  config = 'configs/imagenet_funmatch.py:teacher=unused' + (f',{arguments}' if arguments else '')
  if _TINY.value:
    config += ',runlocal=True'
  batch = 4 if _TINY.value else _BATCH.value
  command = [sys.executable, '-m', 'benchmarks.step_throughput', f'--config={config}',
             '--channels=3', '--num_classes=1000', f'--rounds={_ROUNDS.value}',
             f'--steps={_STEPS.value}', f'--components={",".join(parts)}',
             f'--config.input.batch_size={batch}', '--config.dtype=bfloat16',
             '--config.teacher_dtype=bfloat16', *flags_]
  return benchmarks.json_lines(command)


def case(lines: list[dict[str, Any]]) -> dict[str, Any]:
  """One case's figures from its step_throughput lines."""
  summary, = [l for l in lines if l['measure'] == 'summary']
  parts = {l['name']: l for l in lines if l['measure'] == 'component' and 'kernels' not in l}
  out = {'teachers': summary['teachers'], 'student': summary['student'],
         'batch_size': summary['batch_size'], 'image_shape': summary['image_shape'],
         **{f'{p}_img_per_sec': parts[p]['img_per_sec'] for p in PARTS},
         **{f'{p}_compile_s': parts[p]['compile_s'] for p in PARTS}}
  if REPLAYED in parts:
    out[f'{REPLAYED}_img_per_sec'] = parts[REPLAYED]['img_per_sec']
  for key in ('distill_fraction_of_peak', 'distill_gflop_per_sec', 'step_efficiency',
              'step_efficiency_range', 'distill_memory_mb', 'device_peak_mb', 'input_over_step',
              'replayed_over_distill_step', 'replayed_over_distill_step_range'):
    if key in summary:
      out[key] = summary[key]
  if 'input_pipeline' in parts:
    out['input_img_per_sec'] = parts['input_pipeline']['img_per_sec']
  return out


def device() -> dict[str, Any]:
  """The device the cases run on, and its peak (asked in a process of its own: one that starts
  the backend holds the chip's memory)."""
  code = ('import jax, json; d = jax.devices()[0]; print(json.dumps(dict(backend='
          'jax.default_backend(), device_kind=d.device_kind, devices=jax.device_count(), '
          'cores=__import__("os").cpu_count())))')
  info = json.loads(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                                   check=True).stdout)
  peak = _PEAK.value or next((v for k, v in PEAK_TFLOPS.items()
                              if info['device_kind'].startswith(k)), 0.0)
  return {**info, 'peak_tflops': peak or None}


def has_tensorflow() -> bool:
  """Whether TFDS is installed (found, not imported: importing it takes seconds)."""
  return importlib.util.find_spec('tensorflow_datasets') is not None


def run_case(name: str, report: dict[str, Any], auto: kernels.Kernels, peak: list[str],
             tensorflow: bool) -> dict[str, Any]:
  """Runs case `name` into `report` (its case, its switch's `kernels`, the paper case's `input`);
  returns its case."""
  arguments, switch = CASES[name]
  extra = [f'--standin={16 if _TINY.value else _STANDIN.value}'
           if name == 'paper' and tensorflow else '--input=false']
  if switch:  # The case runs 'auto''s implementation; the others time its distillation step.
    chosen = getattr(auto, switch)
    others = [i for i in kernels.Kernels.available(switch, report['backend']) if i != chosen]
    extra += [f'--config.kernels.{switch}={chosen}',
              f'--kernels={",".join(f"{switch}={i}" for i in others)}']
  lines = step_throughput(arguments, *peak, *extra,
                          parts=(*PARTS, REPLAYED) if name == 'paper' else PARTS)
  found = report['cases'][name] = {**case(lines), 'kernels': switch and {switch: chosen}}
  if switch:
    timed = report['kernels'][switch] = {'auto': chosen, 'case': name}
    for line in lines:
      if line.get('name') == 'distill_step':  # Images/s, or why it could not be timed.
        timed[line.get('kernels', {}).get(switch, chosen)] = line.get('img_per_sec',
                                                                     line.get('error'))
  if name == 'paper':
    report['input'] = ({'img_per_sec': found.pop('input_img_per_sec'),
                        'over_paper_step': found.pop('input_over_step'),
                        'cores': report['cores']} if tensorflow else
                       {'skipped': 'tensorflow_datasets is not installed here'})
  return found


def write(report: dict[str, Any]) -> None:
  with open(_OUT.value, 'w') as f:
    json.dump(report, f, indent=1)


def main(argv):
  del argv
  unknown = [name for name in _CASES.value if name not in CASES]
  if unknown or not _CASES.value:
    raise errors.BadInput(f'--cases={",".join(_CASES.value)}: name one or more of '
                          f'{", ".join(CASES)}.')
  start = time.perf_counter()
  report = {'tiny': _TINY.value, **device(), 'cases': {}, 'kernels': {}, 'complete': False}
  peak = [f'--peak_tflops={report["peak_tflops"]}'] if report['peak_tflops'] else []
  auto = kernels.Kernels().resolved(report['backend'])
  tensorflow = has_tensorflow()
  write(report)  # An unwritable --out fails now, not after the first case.
  for name in _CASES.value:
    case_start = time.perf_counter()
    try:
      found = run_case(name, report, auto, peak, tensorflow)
    except RuntimeError as e:  # Its process failed (its memory, a compile error): why, then on.
      found = report['cases'][name] = {'error': str(e)[-2000:]}
    found['seconds'] = time.perf_counter() - case_start
    report['seconds'] = time.perf_counter() - start
    write(report)
  report['complete'] = True
  write(report)
  print(json.dumps({'out': _OUT.value, 'seconds': report['seconds']}))


if __name__ == '__main__':
  cli.run(main)
