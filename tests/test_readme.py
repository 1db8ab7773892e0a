"""The README's walk-through, "Distill your own teacher into your own student", run command by
command as written, on a tiny folder of images with tiny models (overrides appended)."""

import json
import os
import re
import sys

import jax
import numpy as np
import tensorflow as tf

from big_distill.models import bit
from tests.helpers import ROOT, run

SECTION = '## Distill your own teacher into your own student'
CLASSES = ('cat', 'dog', 'fox')
# Appended to the README's `main` commands: R14 models at 32 px, 8 steps.
SHORT = ('--config.input.resolution=32', '--config.total_steps=8', '--config.log_every_steps=4',
         '--config.eval_every_steps=4', '--config.checkpoint_every_steps=4',
         '--config.schedule.warmup_steps=2', '--config.input.batch_size=16',
         '--config.input.eval_batch_size=16')
TINY = {'fashion_mnist_teacher.py': ('--config.student.depth=14', '--config.student.width=0.25'),
        'fashion_mnist_funmatch.py': ('--config.teachers[0].depth=14',
                                      '--config.teachers[0].width=0.25',
                                      '--config.student.depth=14', '--config.student.width=0.125')}


def readme_commands() -> list[str]:
  """The section's shell commands, continuation lines joined."""
  text = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
  section = text[text.index(SECTION):]
  section = section[:section.index('\n## ', len(SECTION))]
  blocks = re.findall(r'```bash\n(.*?)```', section, re.S)
  return [line.strip() for block in blocks for line in block.replace('\\\n', ' ').splitlines()
          if line.strip()]


def _write_images(root: str) -> None:
  """3 classes of 32x32 RGB images, PNG and JPEG: each class its own colour, plus noise."""
  rng = np.random.default_rng(0)
  for split, count in (('train', 8), ('test', 4)):
    for c, name in enumerate(CLASSES):
      os.makedirs(os.path.join(root, split, name))
      for i in range(count):
        image = np.full((32, 32, 3), 40, np.uint8)
        image[..., c] = 220
        image = np.clip(image + rng.integers(-30, 30, image.shape), 0, 255).astype(np.uint8)
        encode, suffix = ((tf.io.encode_png, 'png') if i % 2 else
                          (tf.io.encode_jpeg, 'jpg'))
        tf.io.write_file(os.path.join(root, split, name, f'{i:04d}.{suffix}'), encode(image))


def _write_bit_init(path: str) -> None:
  """A BiT .npz of the tiny teacher's shape with a head of another class count (as BiT-M's)."""
  model = bit.ResNetV2(depth=14, width=0.25, num_classes=7)
  params = model.init(jax.random.PRNGKey(1), np.zeros((1, 32, 32, 3), np.float32))['params']
  bit.save_bit_npz(jax.device_get(params), path)


def test_the_walkthrough_runs_as_written(tmp_path):
  commands = readme_commands()
  assert [c.split()[2] for c in commands] == [
      'big_distill.main', 'big_distill.main', 'big_distill.evaluate', 'big_distill.report',
      'big_distill.predict', 'big_distill.export', 'big_distill.predict', 'benchmarks.deploy']
  images, tmp = str(tmp_path / 'pets'), str(tmp_path)
  _write_images(images)
  _write_bit_init(os.path.join(tmp, 'BiT-M-R50x1.npz'))
  outputs = []
  for line in commands:
    line = (line.replace('/tmp/', f'{tmp}/').replace('/data/pets', images)
            .replace('=BiT-M-R50x1.npz', f'={tmp}/BiT-M-R50x1.npz'))
    args = line.split()[1:]
    config = next((a for a in args if a.startswith('--config=')), '')
    if config:
      args += [*SHORT, *TINY[os.path.basename(config.split(':')[0])]]
    if args[1] == 'benchmarks.deploy':
      args += ['--rounds=2', '--max_examples=12']
    outputs.append(run([sys.executable, *args], timeout=900).stdout)

  teacher, student = (json.loads(l) for l in (
      open(os.path.join(tmp, name, 'data.json')).read() for name in ('my_teacher', 'my_student')))
  assert teacher['class_names'] == student['class_names'] == list(CLASSES)
  evaluation = json.loads(outputs[2].splitlines()[-1])
  assert evaluation['examples'] == 12 and {'agreement', 'kl', 'teacher_accuracy'} <= set(evaluation)
  assert os.path.exists(os.path.join(tmp, 'my_report', 'results.md'))
  from_run, from_tflite = (
      [l.split(': ', 1) for l in outputs[i].splitlines() if l.startswith(images)] for i in (4, 6))
  assert [f for f, _ in from_run] == sorted(
      os.path.join(images, 'test', 'cat', f) for f in os.listdir(os.path.join(images, 'test',
                                                                              'cat')))
  # The same top class from the run and from the TFLite file.
  assert [p.split()[0] for _, p in from_run] == [p.split()[0] for _, p in from_tflite]
  assert all(p.split()[0] in CLASSES for _, p in from_run)
  assert os.path.exists(os.path.join(tmp, 'student.tflite.json'))
  formats = {json.loads(l).get('format') for l in outputs[7].splitlines() if l.startswith('{')}
  assert {'jax', 'savedmodel', 'tflite_float32', 'tflite_int8'} <= formats
