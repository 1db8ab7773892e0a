r"""big_distill against PyTorch + timm: one teacher -> student pair, the same weights and batches,
timed in interleaved rounds. JSON lines on stdout.

  python -m benchmarks.versus_pytorch [--teacher=vit_small_patch16_224]
      [--student=mobilenetv3_large_100] [--resolution=224] [--batch_size=16] [--rounds=5]

Each framework runs in a worker process of its own (PyTorch next to TensorFlow crashes here, and
neither should inherit the other's threads). The PyTorch worker creates both timm models (seed 0)
and saves their weights as `.safetensors`; the big_distill worker builds the pair from those files
as a user would (`configs/distill.py` with `teacher=FILE`, `teacher_model=timm:NAME`,
`student=timm:NAME` and `student.init=FILE`), compiled as training compiles it. Both time three
parts on the same random batch (224 px, float32, 1,000 classes):

- `teacher_forward`: the teacher in inference mode, no gradients;
- `student_step`: a supervised train step (train-mode forward, cross-entropy, backward, update);
- `distill_step`: function matching as `configs/distill.py` trains it: the batch mixed with its
  neighbour at one Beta(1, 1) ratio, the teacher's and the student's forward on it, KL at
  temperature 1, backward, update.

The update is Adam with decoupled weight decay (PyTorch's `AdamW`; big_distill skips decay on
biases and norms, which costs the same). A round times each part `--steps` calls in the big_distill
worker, then the same in the PyTorch worker, while the other waits, so both see the same load.
`--setup` (repeatable) adds big_distill workers with other XLA flags or config values (kernels),
timed in the same rounds.
The rounds also time a `--matmul`-sided float32 matmul in each worker: the machine's dot speed
under each framework, the bound of a part that is mostly dots (the ViT teacher's forward pass).
Lines: `setting` (the models' parameter counts, equal on both sides, and each worker's set-up and
compile seconds), `component` (per framework, setup and part: median images/s over the rounds),
`matmul` (per framework and setup: GFLOP/s), and a `summary` per setup (per part and the matmul,
big_distill over PyTorch: the median of the rounds' ratios and their range;
and, showing that both sides run the same models on the same weights, the largest difference of
the teacher's and of the student's log-probabilities (eval mode) on the batch's first images).
"""

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, IO

from absl import app, flags
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ('teacher_forward', 'student_step', 'distill_step')
MATMUL = 'matmul'  # Timed besides `PARTS`: each framework's own float32 matmul.
TIMED = (*PARTS, MATMUL)
_TEACHER = flags.DEFINE_string('teacher', 'vit_small_patch16_224', 'The teacher\'s timm name.')
_STUDENT = flags.DEFINE_string('student', 'mobilenetv3_large_100', 'The student\'s timm name.')
_RESOLUTION = flags.DEFINE_integer('resolution', 224, 'Input side.')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Images per step.')
_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'Classes of both heads.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timings per part and framework, interleaved.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Calls per timing.')
_MATMUL = flags.DEFINE_integer('matmul', 2048, 'Side of the square float32 matmul both workers '
                               'also time (the machine\'s dot speed under each framework).')
_WORKER = flags.DEFINE_enum('worker', None, ['torch', 'jax'], 'Internal: run one framework\'s '
                            'parts on requests from stdin.')
_DIR = flags.DEFINE_string('dir', None, 'Internal: where the weights files are.')
_SETUPS = flags.DEFINE_multi_string(
    'setup', [''], 'A big_distill worker per value, `XLA_FLAGS` or `XLA_FLAGS|--config.KEY=VALUE '
    '...`, all timed in the same rounds against the one PyTorch worker (e.g. --setup= '
    '--setup="|--config.kernels.attention=fused"); its `name` in the output is the value.')
_OVERRIDES = flags.DEFINE_multi_string('override', [], 'Internal: a worker\'s --config.KEY=VALUE.')
LR, WD = 3e-3, 1e-4  # configs/distill.py's.
CHECKED = 2  # Images whose log-probabilities both workers report (the same weights, compared).


def _listed(outputs: dict[str, Any]) -> dict[str, list]:
  """`{name}_logp`: each model's log-probabilities (eval mode) on the first images, as lists."""
  return {f'{name}_logp': np.asarray(v, np.float64).tolist() for name, v in outputs.items()}


def batch() -> dict[str, np.ndarray]:
  """The batch both workers time: images in [-1, 1] (NHWC) and labels, from seed 0."""
  noise = np.random.default_rng(0)
  r = _RESOLUTION.value
  return {'image': noise.uniform(-1, 1, (_BATCH.value, r, r, 3)).astype(np.float32),
          'label': noise.integers(0, _CLASSES.value, _BATCH.value).astype(np.int32)}


def torch_parts(directory: str) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
  """The PyTorch worker's parts, after saving the two models' weights into `directory`."""
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  def create(name):
    try:  # A ViT is made for one input side.
      return timm.create_model(name, num_classes=_CLASSES.value, img_size=_RESOLUTION.value)
    except TypeError:
      return timm.create_model(name, num_classes=_CLASSES.value)

  torch.manual_seed(0)
  teacher, student = create(_TEACHER.value).eval(), create(_STUDENT.value).train()
  for name, model in (('teacher', teacher), ('student', student)):
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                os.path.join(directory, f'{name}.safetensors'))
  for p in teacher.parameters():
    p.requires_grad_(False)
  def normalized(model):  # The model on images in [-1, 1], as big_distill's timm models take them.
    mean, std = (torch.tensor(timm.data.resolve_data_config({}, model=model)[k]).view(1, 3, 1, 1)
                 for k in ('mean', 'std'))
    return lambda x: model(((x + 1) / 2 - mean) / std)

  teacher_fn, student_fn = normalized(teacher), normalized(student)
  data = batch()
  images = torch.from_numpy(data['image']).permute(0, 3, 1, 2).contiguous()
  labels = torch.from_numpy(data['label']).long()
  beta = torch.distributions.Beta(1.0, 1.0)

  def optimizer():
    return torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=WD)
  optimizers = {'student_step': optimizer(), 'distill_step': optimizer()}

  def update(loss, name):
    optimizers[name].zero_grad(set_to_none=True)
    loss.backward()
    optimizers[name].step()
    return loss

  def teacher_forward():
    with torch.no_grad():
      return F.log_softmax(teacher_fn(images), -1)

  def student_step():
    return update(F.cross_entropy(student_fn(images), labels), 'student_step')

  def distill_step():
    ratio = beta.sample()
    mixed = ratio * images + (1 - ratio) * images.roll(1, 0)
    with torch.no_grad():
      target = F.log_softmax(teacher_fn(mixed), -1)
    loss = F.kl_div(F.log_softmax(student_fn(mixed), -1), target, log_target=True,
                    reduction='batchmean')
    return update(loss, 'distill_step')

  square = torch.rand(_MATMUL.value, _MATMUL.value)
  parts = {'teacher_forward': teacher_forward, 'student_step': student_step,
           'distill_step': distill_step, MATMUL: lambda: square @ square}
  student.eval()
  with torch.no_grad():
    outputs = {name: F.log_softmax(fn(images[:CHECKED]), -1).numpy()
               for name, fn in (('teacher', teacher_fn), ('student', student_fn))}
  student.train()
  info = {**_listed(outputs), 'torch': torch.__version__, 'timm': timm.__version__, 'threads': torch.get_num_threads(),
          'teacher_params': sum(p.numel() for p in teacher.parameters()),
          'student_params': sum(p.numel() for p in student.parameters())}
  return parts, info


def jax_parts(directory: str) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
  """The big_distill worker's parts: the pair built from the PyTorch worker's files."""
  import functools  # pylint: disable=g-import-not-at-top
  from big_distill import cli  # pylint: disable=g-import-not-at-top
  cli.set_cpu_xla_flags()  # As every big_distill command does (and a --setup's flags win).
  import jax  # pylint: disable=g-import-not-at-top
  from big_distill import build, configlib, parallel  # pylint: disable=g-import-not-at-top

  path = functools.partial(os.path.join, directory)
  config_path = os.path.join(ROOT, 'configs', 'distill.py')
  arg = ','.join((f'teacher={path("teacher.safetensors")}', f'teacher_model=timm:{_TEACHER.value}',
                  f'student=timm:{_STUDENT.value}', f'resolution={_RESOLUTION.value}'))
  configs = {mode: configlib.load(config_path, arg) for mode in ('distill', 'supervised')}
  for mode, config in configs.items():
    config = configs[mode] = configlib.override(config, _OVERRIDES.value)
    config.update(mode=mode)
    config.student.init = path('student.safetensors')
    config.input.batch_size = _BATCH.value
  config = configs['distill']
  data = build.Data(_CLASSES.value, 3, _BATCH.value)
  run = build.create_run(config, data=data)
  supervised = build.create_run(configs['supervised'], data=data)
  init = build.load_student_init(run)
  host = batch()
  images = jax.device_put(host['image'], parallel.batch_sharded(run.mesh))
  device_batch = jax.device_put(host, parallel.batch_sharded(run.mesh))
  rng = jax.random.PRNGKey(0)
  teacher_forward = jax.jit(functools.partial(run.teachers.log_probs,
                                              temperature=config.temperature))
  stepped = {'student_step': (supervised, ()), 'distill_step': (run, run.teacher_params)}
  states = {name: r.new_state(init) for name, (r, _) in stepped.items()}
  arguments = {'teacher_forward': (teacher_forward, (run.teacher_params, images)),
               **{name: (r.train_step, (states[name], teacher_params, device_batch, rng))
                  for name, (r, teacher_params) in stepped.items()}}
  compiled, compile_s = {}, {}
  for name, (fn, args) in arguments.items():
    start = time.perf_counter()
    compiled[name] = fn.lower(*args).compile()
    compile_s[name] = time.perf_counter() - start

  def call(name):
    fn = compiled[name]
    if name == 'teacher_forward':
      return jax.block_until_ready(fn(run.teacher_params, images))
    states[name], metrics = fn(states[name], stepped[name][1], device_batch, rng)
    return jax.block_until_ready(metrics)

  parts = {name: functools.partial(call, name) for name in PARTS}
  square = jax.numpy.ones((_MATMUL.value, _MATMUL.value), jax.numpy.float32)
  matmul = jax.jit(lambda a: a @ a)
  parts[MATMUL] = lambda: jax.block_until_ready(matmul(square))
  outputs = {'teacher': teacher_forward(run.teacher_params, images[:CHECKED]),
             'student': jax.nn.log_softmax(jax.jit(functools.partial(run.student.apply,
                                                                     train=False))(
                 init, images[:CHECKED]))}
  info = {**_listed(outputs), 'jax': jax.__version__, 'backend': jax.default_backend(),
          'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'teacher_params': sum(x.size for x in jax.tree.leaves(run.teacher_params)),
          'student_params': sum(x.size for x in jax.tree.leaves(init['params'])),
          **{f'{name}_compile_s': seconds for name, seconds in compile_s.items()}}
  return parts, info


def serve(make_parts: Callable[[str], tuple[dict[str, Callable[[], Any]], dict[str, Any]]],
          out: IO[str]) -> None:
  """A worker: builds its parts (one warm-up call each), says `ready` on `out`, then answers each
  `PART STEPS` line of stdin with the seconds per call."""
  start = time.perf_counter()
  parts, info = make_parts(_DIR.value)
  for fn in parts.values():
    fn()
  print(json.dumps({'ready': True, 'setup_s': time.perf_counter() - start, **info}), file=out,
        flush=True)
  for line in sys.stdin:
    name, steps = line.split()
    start = time.perf_counter()
    for _ in range(int(steps)):
      parts[name]()
    print(json.dumps({'seconds': (time.perf_counter() - start) / int(steps)}), file=out,
          flush=True)


class Worker:
  """A worker process of this module, driven line by line."""

  def __init__(self, framework: str, directory: str, setup: str = ''):
    xla_flags, _, overrides = setup.partition('|')
    argv = [f'--worker={framework}', f'--dir={directory}', *(
        a for a in sys.argv[1:] if not a.startswith(('--worker', '--dir', '--setup'))), *(
        f'--override={o}' for o in overrides.split())]
    env = {**os.environ, 'XLA_FLAGS': xla_flags} if xla_flags else None
    self.process = subprocess.Popen([sys.executable, '-m', 'benchmarks.versus_pytorch', *argv],
                                    cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
    self.info = self.read()

  def read(self) -> dict[str, Any]:
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f'the worker stopped (exit code {self.process.wait()}); see its stderr')
    return json.loads(line)

  def seconds(self, part: str, steps: int) -> float:
    self.process.stdin.write(f'{part} {steps}\n')
    self.process.stdin.flush()
    return self.read()['seconds']

  def close(self) -> None:
    self.process.stdin.close()
    self.process.wait()


def emit(record: dict[str, Any]) -> None:
  print(json.dumps(record), flush=True)


def compare() -> None:
  setups = list(dict.fromkeys(_SETUPS.value))
  with tempfile.TemporaryDirectory() as directory:
    torch_worker = Worker('torch', directory)  # Writes the weights the others read.
    workers = {setup: Worker('jax', directory, setup) for setup in setups}
    setting = {'teacher': _TEACHER.value, 'student': _STUDENT.value,
               'resolution': _RESOLUTION.value, 'batch_size': _BATCH.value}

    def described(worker):
      return {k: v for k, v in worker.info.items() if not k.endswith('_logp')}
    emit({'measure': 'setting', **setting, 'pytorch': described(torch_worker),
          'big_distill': {setup: described(w) for setup, w in workers.items()}})
    times = {(setup, part): [] for setup in (*setups, None) for part in TIMED}  # None: PyTorch.
    for _ in range(_ROUNDS.value):
      for part in TIMED:
        for setup, worker in (*workers.items(), (None, torch_worker)):
          times[setup, part].append(worker.seconds(part, _STEPS.value))
    for worker in (*workers.values(), torch_worker):
      worker.close()
  for setup in (*setups, None):
    for part in PARTS:
      emit({'measure': 'component', 'framework': 'pytorch' if setup is None else 'big_distill',
            **({} if setup is None else {'setup': setup}), 'name': part,
            'img_per_sec': _BATCH.value / statistics.median(times[setup, part]), **setting})
    emit({'measure': MATMUL, 'framework': 'pytorch' if setup is None else 'big_distill',
          **({} if setup is None else {'setup': setup}), 'size': _MATMUL.value,
          'gflop_per_sec': 2 * _MATMUL.value**3 / statistics.median(times[setup, MATMUL]) / 1e9})
  for setup, worker in workers.items():
    summary = {'measure': 'summary', 'setup': setup, **setting}
    for model in ('teacher', 'student'):
      summary[f'{model}_logp_max_difference'] = float(np.max(np.abs(np.subtract(
          worker.info[f'{model}_logp'], torch_worker.info[f'{model}_logp']))))
    for part in TIMED:
      ratios = [t / b for b, t in zip(times[setup, part], times[None, part])]
      summary[f'{part}_over_pytorch'] = statistics.median(ratios)
      summary[f'{part}_over_pytorch_range'] = [min(ratios), max(ratios)]
    emit(summary)


def main(argv):
  del argv
  if _WORKER.value:
    out = os.fdopen(os.dup(sys.stdout.fileno()), 'w')  # The protocol; the libraries' prints
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
      serve(torch_parts if _WORKER.value == 'torch' else jax_parts, out)
  else:
    compare()


if __name__ == '__main__':
  app.run(main)
