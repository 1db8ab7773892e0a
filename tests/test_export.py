"""`big_distill.export` to SavedModel and TFLite (`serving`): the exported models compute the
run's logits, read back by plain TensorFlow in a fresh process; bad input writes nothing; a
damaged or foreign export is one sentence naming it."""

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys

from ai_edge_litert import interpreter as litert
import jax
import numpy as np
import pytest
import tensorflow as tf

from big_distill import build, checkpoint, errors, serving
from big_distill.data import input_pipeline
from tests.helpers import command, error_lines, get_config, run, snapshot

ABSL_INFO = re.compile(r'^I\d{4} \d\d:\d\d:\d\d')  # An absl INFO line's prefix.
# What a deployment runs: only TensorFlow (no big_distill) reads the SavedModel.
PLAIN_TF = '''
import sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
files = [tf.io.read_file(f'{sys.argv[2]}/{i}.png') for i in range(7)]
pixels = np.load(f'{sys.argv[2]}/pixels.npy')
other = np.load(f'{sys.argv[2]}/other_size.npy')
outputs = {
    'encoded': model.signatures['serving_default'](images=tf.stack(files)),
    'pixels': model.signatures['pixels'](images=tf.constant(pixels)),
    'other_size': model.signatures['pixels'](images=tf.constant(other)),
}
assert not any(m.startswith('big_distill') for m in sys.modules)
np.savez(f'{sys.argv[2]}/out.npz', **{f'{k}_{o}': v[o].numpy() for k, v in outputs.items()
                                      for o in ('logits', 'probabilities')})
'''


def _export(workdir: str, output: str, *args: str) -> subprocess.CompletedProcess:
  return run(command('big_distill.export', f'--workdir={workdir}', f'--output={output}', *args))


@pytest.fixture(scope='module')
def exported(teacher_run, fmnist_builder, tmp_path_factory):
  """The tiny run's student as a SavedModel, a float32 TFLite file of 4 images a call and an int8
  TFLite file of one (the default; the real command, two at a time), with 7 eval images and the
  JAX model's logits on them."""
  out = tmp_path_factory.mktemp('exported')
  paths = {'savedmodel': str(out / 'student'), 'tflite': str(out / 'student.tflite'),
           'int8': str(out / 'student_int8.tflite')}
  flags_ = {'savedmodel': ['--format=savedmodel'], 'tflite': ['--format=tflite', '--batch_size=4'],
            'int8': ['--format=tflite', '--int8']}
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    procs = dict(zip(paths, pool.map(lambda k: _export(teacher_run, paths[k], *flags_[k]),
                                     paths)))
  state = build.create_run_from_workdir(teacher_run)
  variables, step, _ = checkpoint.read_variables(teacher_run, 'best')
  cfg = state.config.input
  raw = next(fmnist_builder.as_dataset(
      split=cfg.eval_split, shuffle_files=False).batch(7).as_numpy_iterator())
  pixels = raw['image']
  # Another size (not square, not the resolution): resized and cropped inside the model.
  other = tf.cast(tf.round(tf.image.resize(pixels, (36, 30))), tf.uint8).numpy()
  forward = jax.jit(lambda images: state.student.apply(variables, images, train=False))
  eval_images = lambda images: np.stack([
      input_pipeline.eval_image(i, cfg.resolution, cfg.central_crop) for i in images])
  return dict(paths=paths, procs=procs, step=step, pixels=pixels, other_size=other,
              labels=raw['label'], logits=np.asarray(forward(eval_images(pixels))),
              other_logits=np.asarray(forward(eval_images(other))), run=state)


def test_command_says_what_it_wrote(exported):
  for name, proc in exported['procs'].items():
    path = exported['paths'][name]
    assert proc.stdout.startswith(f'Wrote the student of the latest checkpoint, step 10 to {path} ')
    assert 'checkpoint_manager.py' not in proc.stderr  # No orbax warning (read_only=True's).
    metadata = json.loads(serving.metadata_path(path, 'savedmodel' if name == 'savedmodel' else
                                                'tflite').read_text())
    assert metadata['checkpoint']['step'] == exported['step'] == 10
    assert metadata['class_names'][:2] == ['T-shirt/top', 'Trouser']
    assert (metadata['resolution'], metadata['channels'], metadata['central_crop']) == (28, 1, 1.0)
    assert metadata['quantization'] == ('dynamic_range_int8' if name == 'int8' else 'none')
    assert set(metadata['signatures']) == ({'serving_default', 'pixels', 'pixels_at_resolution'}
                                           if name == 'savedmodel' else {'pixels_at_resolution'})
    batch = {'savedmodel': 'batch', 'tflite': '4', 'int8': '1'}[name]
    assert metadata['signatures']['pixels_at_resolution'].startswith(
        f'images: uint8 [{batch}, 28, 28, 1]')
    assert metadata.get('batch_size') == {'savedmodel': None, 'tflite': 4, 'int8': 1}[name]


def test_tflite_has_a_fixed_batch_and_no_shape_arithmetic(exported):
  """A symbolic batch would become shape ops around every layer, which made TFLite about 7
  times slower; at a fixed batch the convolutions are TFLite's own kernels."""
  for name, batch in (('tflite', 4), ('int8', 1)):
    interpreter = litert.Interpreter(model_path=exported['paths'][name])
    (details,) = interpreter.get_signature_runner('pixels_at_resolution').get_input_details(
        ).values()
    assert list(details['shape']) == list(details['shape_signature']) == [batch, 28, 28, 1]
    # pylint: disable-next=protected-access
    ops = {op['op_name'] for op in interpreter._get_ops_details()}
    assert 'CONV_2D' in ops and not ops & {'SHAPE', 'GATHER', 'UNSORTED_SEGMENT_PROD'}, (
        name, sorted(ops))


def test_savedmodel_in_plain_tensorflow_computes_the_runs_logits(exported, tmp_path):
  for i, image in enumerate(exported['pixels']):
    tf.io.write_file(str(tmp_path / f'{i}.png'), tf.io.encode_png(image))
  np.save(tmp_path / 'pixels.npy', exported['pixels'])
  np.save(tmp_path / 'other_size.npy', exported['other_size'])
  run([sys.executable, '-c', PLAIN_TF, exported['paths']['savedmodel'], str(tmp_path)],
      fresh=True)  # It checks what it imports.
  out = dict(np.load(tmp_path / 'out.npz'))
  want = exported['logits']
  for key in ('encoded', 'pixels'):
    np.testing.assert_allclose(out[f'{key}_logits'], want, rtol=1e-4, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(out[f'{key}_probabilities'], tf.nn.softmax(want), rtol=1e-4,
                               atol=1e-6, err_msg=key)
  np.testing.assert_allclose(out['other_size_logits'], exported['other_logits'], rtol=1e-4,
                             atol=1e-5)


def test_load_runs_both_formats_at_batch_1_and_7(exported):
  """The TFLite model takes 4 images a call: 7 are two calls, the last padded."""
  want = exported['logits']
  saved = serving.load(exported['paths']['savedmodel'])
  lite = serving.load(exported['paths']['tflite'])
  images = exported['pixels']
  for model, tolerance in ((saved, 1e-4), (lite, 1e-3)):
    np.testing.assert_allclose(model.logits_from_pixels(images), want, rtol=tolerance,
                               atol=tolerance / 10, err_msg=model.format)
    np.testing.assert_allclose(model.logits_from_pixels(images[:1]), want[:1], rtol=tolerance,
                               atol=tolerance / 10, err_msg=model.format)
  encoded = [tf.io.encode_png(i).numpy() for i in images]
  np.testing.assert_allclose(saved.logits_from_encoded(encoded), want, rtol=1e-4, atol=1e-5)
  with pytest.raises(errors.BadInput, match='takes pixels at its resolution'):
    lite.logits_from_encoded(encoded)
  with pytest.raises(errors.BadInput, match=r'uint8 images of shape \[batch, 28, 28, 1\]'):
    lite.logits_from_pixels(exported['other_size'])
  # An image of another size, brought to the resolution as the eval does, then rounded.
  resized = np.stack([serving.pixels_at_resolution(i, lite.metadata)
                      for i in exported['other_size']])
  np.testing.assert_allclose(lite.logits_from_pixels(resized), exported['other_logits'],
                             atol=0.05 * np.abs(want).max())
  np.testing.assert_array_equal(serving.pixels_at_resolution(images[0], lite.metadata), images[0])


@pytest.mark.parametrize('student, kernels', [('mobilenet_v3', 'auto'), ('vit', 'auto'),
                                             ('mobilenet_v3', 'grouped'), ('vit', 'fused')])
def test_other_families_export_to_tflite_one_image_a_call(student, kernels, tmp_path):
  """The default TFLite export (batch 1) of the demo's MobileNetV3 and ViT students, with random
  parameters (heads included), computes their JAX logits, with the CPU's kernels ('auto' here)
  and with an accelerator's; BiT's is the `exported` fixture."""
  config = get_config('distill.py', f'runlocal=True,student={student}')
  config.mode = 'supervised'
  config.kernels[{'mobilenet_v3': 'depthwise', 'vit': 'attention'}[student]] = kernels
  state = build.create_run(config, data=build.Data(10, 1, 64))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(
      lambda v: np.asarray(v) + rng.normal(0.0, 0.05, np.shape(v)).astype(np.float32),
      state.init_state(jax.random.PRNGKey(0)).variables)
  path = str(tmp_path / 'student.tflite')
  serving.save(state, variables, path, 'tflite', checkpoint={})
  images = rng.integers(0, 256, (3, *state.image_shape)).astype(np.uint8)
  want = np.asarray(state.student.apply(variables, input_pipeline.to_float(images).numpy(),
                                         train=False))
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(serving.load(path).logits_from_pixels(images), want, rtol=1e-4,
                             atol=1e-5 * np.abs(want).max())


def test_int8_tflite_is_smaller_and_close(exported):
  float_size = os.path.getsize(exported['paths']['tflite'])
  assert os.path.getsize(exported['paths']['int8']) < 0.4 * float_size
  logits = serving.load(exported['paths']['int8']).logits_from_pixels(exported['pixels'])
  want = exported['logits']  # A 10-step run's logits are close together: argmax may differ.
  np.testing.assert_allclose(logits, want, atol=0.1 * np.abs(want).max())
  assert np.mean(logits.argmax(-1) == want.argmax(-1)) >= 5 / 7


def test_bad_input_one_line_and_nothing_written(teacher_run, tmp_path):
  d = tmp_path
  (d / 'full').mkdir()
  (d / 'full' / 'x').write_text('x')
  (d / 'a_dir.tflite').mkdir()
  mobilenet = d / 'mobilenet_run'
  mobilenet.mkdir()
  with open(os.path.join(teacher_run, 'config.json')) as f:
    config = json.load(f)
  config['student'] = dict(model='mobilenet_v3', variant='small', width=0.5, init='')
  (mobilenet / 'config.json').write_text(json.dumps(config))
  shutil.copy(os.path.join(teacher_run, 'data.json'), mobilenet / 'data.json')
  new = str(d / 'new' / 'student')
  cases = [  # (flags, output, the error)
      (['--format=onnx'], new, '--format=onnx; use one of npz, savedmodel, tflite.'),
      (['--format=savedmodel', '--batch_size=4'], new,
       '--batch_size fixes a TFLite export\'s images per call; add --format=tflite (not '
       'savedmodel).'),
      (['--format=tflite', '--batch_size=0'], new,
       '--batch_size=0: a TFLite export takes at least 1 image per call.'),
      (['--format=savedmodel', '--int8'], new,
       '--int8 quantises a TFLite export; add --format=tflite (not savedmodel).'),
      (['--format=savedmodel'], str(d / 'full'),
       f'--output={d}/full exists; a SavedModel is written into a new or empty directory.'),
      (['--format=tflite'], str(d / 'a_dir.tflite'),
       f'--output={d}/a_dir.tflite is a directory; name the .tflite file to write.'),
      (['--format=tflite', f'--workdir={d}/no_run'], new,
       f'{d}/no_run holds no big_distill run (no config.json).'),
      (['--format=npz', f'--workdir={mobilenet}'], new,
       '--format=npz: a mobilenet_v3 student has no .npz layout; use --format=savedmodel or '
       '--format=tflite, or big_distill.convert for its other layouts.'),
  ]
  before = snapshot(str(d)), snapshot(teacher_run)

  def attempt(case):
    flags_, output, _ = case
    workdir = [] if any(f.startswith('--workdir') for f in flags_) else [f'--workdir={teacher_run}']
    return run(command('big_distill.export', *workdir, f'--output={output}', *flags_),
               check=False)

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    procs = list(pool.map(attempt, cases))
  for (flags_, _, expected), proc in zip(cases, procs):
    assert proc.returncode == errors.BAD_INPUT, (flags_, proc.stderr[-2000:])
    assert error_lines(proc.stderr) == [f'big_distill: error: {expected}'], flags_
  assert (snapshot(str(d)), snapshot(teacher_run)) == before


def _foreign_tflite(path) -> None:
  """A TFLite file written by TensorFlow's converter, not by big_distill.export."""
  double = tf.function(lambda x: {'y': 2.0 * x}, input_signature=[tf.TensorSpec([1, 4])])
  path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions(
      [double.get_concrete_function()], double).convert())


def _foreign_savedmodel(path) -> None:
  """A SavedModel written by TensorFlow, not by big_distill.export."""
  module = tf.Module()
  module.double = tf.function(lambda x: {'y': 2.0 * x}, input_signature=[tf.TensorSpec([None])])
  tf.saved_model.save(module, str(path), signatures={'serving_default': module.double})


def _edit(path, how: str) -> None:
  """Truncates a file to half, cuts its last 16 bytes, garbles 10 bytes in its middle, or
  replaces it with text that is not a model."""
  data = path.read_bytes()
  middle = len(data) // 2
  path.write_bytes({'truncate': data[:middle], 'cut_16': data[:-16],
                    'garble': data[:middle] + b'0123456789' + data[middle + 10:],
                    'garbage': b'not a model\n' * 100}[how])


def _metadata(path, **changes) -> None:
  info = json.loads(path.read_text())
  path.write_text(json.dumps({**info, **changes}))


# (case, the model loaded, what is done to the copy in `d`, the message; {tfl}: d/student.tflite,
# {sm}: d/student, {meta}: the model's metadata file).
DAMAGED = [
    ('tflite truncated', 'tflite', lambda d: _edit(d / 'student.tflite', 'truncate'),
     '{tfl} is damaged or not a TFLite model (it is not a valid TFLite flatbuffer); export it '
     'again.'),
    ('tflite without its last 16 bytes', 'tflite', lambda d: _edit(d / 'student.tflite', 'cut_16'),
     '{tfl} is damaged or not a TFLite model (it is not a valid TFLite flatbuffer); export it '
     'again.'),
    ('tflite garbage', 'tflite', lambda d: _edit(d / 'student.tflite', 'garbage'),
     '{tfl} is damaged or not a TFLite model (it is not a valid TFLite flatbuffer); export it '
     'again.'),
    ('tflite from elsewhere', 'tflite', lambda d: (
        _foreign_tflite(d / 'student.tflite'), os.remove(d / 'student.tflite.json')),
     '{tfl} is not a model written by big_distill.export (no {meta}).'),
    ('tflite from elsewhere with our metadata', 'tflite',
     lambda d: _foreign_tflite(d / 'student.tflite'),
     '{tfl} has no pixels_at_resolution signature, so it was not written by big_distill.export '
     'and {meta} describes another model.'),
    ('metadata not JSON', 'tflite', lambda d: _edit(d / 'student.tflite.json', 'truncate'),
     "{meta} is damaged: it is not JSON (Unterminated string starting at: line "),
    ('metadata not text', 'tflite', lambda d: (d / 'student.tflite.json').write_bytes(
        bytes(range(256))),
     "{meta} is damaged: it is not JSON ('utf-8' codec can't decode byte 0x80 in position 128"),
    ('metadata of other content', 'tflite', lambda d: (d / 'student.tflite.json').write_text('{}'),
     '{meta} is not the metadata big_distill.export writes for a tflite model (missing or wrong: '
     'format, resolution, channels, central_crop, class_names).'),
    ('metadata of a SavedModel', 'tflite', lambda d: _metadata(d / 'student.tflite.json',
                                                              format='savedmodel'),
     '{meta} is not the metadata big_distill.export writes for a tflite model (missing or wrong: '
     'format).'),
    ('metadata of another resolution', 'tflite', lambda d: _metadata(d / 'student.tflite.json',
                                                                    resolution=32),
     '{tfl} does not match its metadata {meta}: the model takes uint8 images [4, 28, 28, 1] and '
     'gives logits [4, 10], the metadata describes uint8 images [4, 32, 32, 1] and 10 classes; '
     'export the model again.'),
    ('saved_model.pb truncated', 'savedmodel', lambda d: _edit(d / 'student' / 'saved_model.pb',
                                                              'truncate'),
     '{sm}/saved_model.pb is damaged: it does not parse as a SavedModel; export the model again.'),
    ('saved_model.pb missing', 'savedmodel', lambda d: os.remove(d / 'student' / 'saved_model.pb'),
     '{sm} is not a SavedModel (no saved_model.pb in it).'),
    ('variables truncated', 'savedmodel', lambda d: _edit(
        next((d / 'student' / 'variables').glob('variables.data-*')), 'truncate'),
     'The variables of {sm} ({sm}/variables) are missing or damaged; export the model again.'),
    ('variables garbled', 'savedmodel', lambda d: _edit(
        next((d / 'student' / 'variables').glob('variables.data-*')), 'garble'),
     'The variables of {sm} ({sm}/variables) are missing or damaged; export the model again.'),
    ('variables index garbage', 'savedmodel', lambda d: _edit(
        d / 'student' / 'variables' / 'variables.index', 'garbage'),
     'The variables of {sm} ({sm}/variables) are missing or damaged; export the model again.'),
    ('variables missing', 'savedmodel', lambda d: shutil.rmtree(d / 'student' / 'variables'),
     'The variables of {sm} ({sm}/variables) are missing or damaged; export the model again.'),
    ('SavedModel from elsewhere with our metadata', 'savedmodel', lambda d: (
        shutil.move(d / 'student' / 'big_distill.json', d / 'meta.json'),
        shutil.rmtree(d / 'student'), _foreign_savedmodel(d / 'student'),
        shutil.move(d / 'meta.json', d / 'student' / 'big_distill.json')),
     '{sm} has no pixels_at_resolution signature, so it was not written by big_distill.export and '
     '{meta} describes another model.'),
    ('SavedModel metadata of 2 classes', 'savedmodel', lambda d: _metadata(
        d / 'student' / 'big_distill.json', class_names=['a', 'b']),
     '{sm} does not match its metadata {meta}: the model takes uint8 images [batch, 28, 28, 1] '
     'and gives logits [batch, 10], the metadata describes uint8 images [batch, 28, 28, 1] and 2 '
     'classes; export the model again.'),
]


def _damaged_copy(exported, d, damage) -> None:
  """The SavedModel and the TFLite file of 4 images a call, with their metadata, in `d`;
  damaged."""
  shutil.copytree(exported['paths']['savedmodel'], d / 'student')
  for suffix in ('', '.json'):
    shutil.copy(exported['paths']['tflite'] + suffix, d / f'student.tflite{suffix}')
  damage(d)


@pytest.mark.parametrize('case, fmt, damage, message', DAMAGED, ids=[c[0] for c in DAMAGED])
def test_a_damaged_or_foreign_export_is_named_in_one_sentence(exported, tmp_path, case, fmt,
                                                              damage, message):
  _damaged_copy(exported, tmp_path, damage)
  path = tmp_path / ('student' if fmt == 'savedmodel' else 'student.tflite')
  expected = message.format(tfl=tmp_path / 'student.tflite', sm=tmp_path / 'student',
                            meta=serving.metadata_path(path, fmt))
  with pytest.raises(errors.BadInput) as e:
    serving.load(str(path))
  assert str(e.value).startswith(expected), case
  assert '\n' not in str(e.value)


def test_predict_on_a_damaged_export_says_one_line_and_no_tensorflow(exported, tmp_path):
  cases = [c for c in DAMAGED if c[0] in (
      'tflite truncated', 'tflite from elsewhere with our metadata', 'variables truncated')]
  image = tmp_path / 'image.png'
  tf.io.write_file(str(image), tf.io.encode_png(exported['pixels'][0]))

  def attempt(case):
    name, fmt, damage, message = case
    d = tmp_path / name.replace(' ', '_')
    d.mkdir()
    _damaged_copy(exported, d, damage)
    path = d / ('student' if fmt == 'savedmodel' else 'student.tflite')
    before = snapshot(str(d))
    proc = run(command('big_distill.predict', f'--exported={path}', str(image)), check=False)
    return proc, before, d, message.format(tfl=d / 'student.tflite', sm=d / 'student',
                                           meta=serving.metadata_path(path, fmt))

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    for proc, before, d, message in pool.map(attempt, cases):
      assert proc.returncode == errors.BAD_INPUT, proc.stderr[-2000:]
      # Besides absl's INFO log, the error line alone: no traceback, TensorFlow or LiteRT text.
      lines = [l for l in proc.stderr.splitlines() if l.strip() and not ABSL_INFO.match(l)]
      assert lines == [f'big_distill: error: {message}'], lines
      assert proc.stdout == '' and snapshot(str(d)) == before
