"""The README's walk-through, "Distill your own teacher into your own student", run command by
command as written, on a tiny folder of images with tiny models (overrides appended)."""

import json
import os
import re
import sys

import jax
import numpy as np
from PIL import Image

from big_distill.models import bit
from tests.helpers import ROOT, init_variables, run

SECTION = '## Distill your own teacher into your own student'
CLASSES = ('cat', 'dog', 'fox')
PER_CLASS = {'train': 28, 'test': 6}  # 102 images.
# Appended to the README's `main` commands: 32 px, 8 steps, and the demo's MobileNetV3 student
# (a small one; the README's is timm's MobileNetV3-Large).
SHORT = ('--config.input.resolution=32', '--config.total_steps=8', '--config.log_every_steps=4',
         '--config.eval_every_steps=4', '--config.checkpoint_every_steps=4',
         '--config.input.batch_size=16', '--config.input.eval_batch_size=16')
TINY = {'teacher.py': (),
        'distill.py': ('--config.student.model=mobilenet_v3:variant=small,width=0.5',)}


def readme_commands() -> list[str]:
  """The section's shell commands, continuation lines joined."""
  text = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
  section = text[text.index(SECTION):]
  section = section[:section.index('\n## ', len(SECTION))]
  blocks = re.findall(r'```bash\n(.*?)```', section, re.S)
  return [line.strip() for block in blocks for line in block.replace('\\\n', ' ').splitlines()
          if line.strip()]


def _write_images(root: str) -> None:
  """3 classes of 32x32 images, each class its own colour plus noise, in the formats people's
  folders hold: JPEG, PNG, PNG with transparency, grey PNG, a phone's EXIF-rotated JPEG, WEBP,
  GIF, TIFF; and a `Thumbs.db` among them."""
  rng = np.random.default_rng(0)
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotated 90 degrees, as a phone held sideways writes it.
  formats = (('jpg', 'RGB', {}), ('png', 'RGB', {}), ('png', 'RGBA', {}), ('png', 'L', {}),
             ('jpg', 'RGB', {'exif': exif}), ('webp', 'RGB', {'lossless': True}),
             ('gif', 'P', {}), ('tif', 'RGB', {}))
  for split, count in PER_CLASS.items():
    for c, name in enumerate(CLASSES):
      os.makedirs(os.path.join(root, split, name))
      for i in range(count):
        image = np.full((32, 32, 3), 40, np.uint8)
        image[..., c] = 220
        image = np.clip(image + rng.integers(-30, 30, image.shape), 0, 255).astype(np.uint8)
        suffix, mode, options = formats[i % len(formats)]
        pil = Image.fromarray(image)
        pil = pil.quantize() if mode == 'P' else pil.convert(mode)
        if mode == 'RGBA':
          pil.putalpha(Image.fromarray(np.where(np.arange(32) < 4, 0, 255).astype(np.uint8)[
              None].repeat(32, 0)))  # A transparent strip on the left.
        pil.save(os.path.join(root, split, name, f'{i:04d}.{suffix}'), **options)
      with open(os.path.join(root, split, name, 'Thumbs.db'), 'wb') as f:
        f.write(b'\xd0\xcf\x11\xe0 a thumbnail cache')


def _write_bit_init(path: str) -> None:
  """A BiT .npz of the tiny teacher's shape with a head of another class count (as BiT-M's)."""
  model = bit.ResNetV2(depth=14, width=0.25, num_classes=7)
  params = init_variables(model, 1, (1, 32, 32, 3))['params']
  bit.save_bit_npz(jax.device_get(params), path)


def test_the_walkthrough_runs_as_written(tmp_path):
  commands = readme_commands()
  assert [c.split()[2] for c in commands] == [
      'big_distill.main', 'big_distill.main', 'big_distill.evaluate', 'big_distill.report',
      'big_distill.predict', 'big_distill.export', 'big_distill.predict', 'big_distill.deploy']
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
    if args[1] == 'big_distill.deploy':
      args += ['--rounds=2', '--max_examples=12']
    outputs.append(run([sys.executable, *args], timeout=900).stdout)

  teacher, student = (json.loads(l) for l in (
      open(os.path.join(tmp, name, 'data.json')).read() for name in ('my_teacher', 'my_student')))
  assert teacher['class_names'] == student['class_names'] == list(CLASSES)
  assert teacher['num_train'] == 3 * PER_CLASS['train']  # Every file an image, Thumbs.db aside.
  evaluation = json.loads(outputs[2].splitlines()[-1])
  assert evaluation['examples'] == 3 * PER_CLASS['test']
  assert {'agreement', 'kl', 'teacher_accuracy'} <= set(evaluation)
  results = open(os.path.join(tmp, 'my_report', 'results.md')).read()
  assert '| my_teacher | teacher |' in results  # The teacher run, not a supervised baseline.
  from_run, from_tflite = (
      [l.split(': ', 1) for l in outputs[i].splitlines() if l.startswith(images)] for i in (4, 6))
  assert [f for f, _ in from_run] == sorted(
      os.path.join(images, 'test', 'cat', f) for f in os.listdir(os.path.join(images, 'test',
                                                                              'cat'))
      if f != 'Thumbs.db')
  # The same top class from the run and from the TFLite file.
  assert [p.split()[0] for _, p in from_run] == [p.split()[0] for _, p in from_tflite]
  assert all(p.split()[0] in CLASSES for _, p in from_run)
  assert os.path.exists(os.path.join(tmp, 'student.tflite.json'))
  formats = {json.loads(l).get('format') for l in outputs[7].splitlines() if l.startswith('{')}
  assert {'jax', 'savedmodel', 'tflite_float32', 'tflite_int8'} <= formats
