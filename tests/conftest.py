"""Fixtures: the offline Fashion-MNIST dataset and short runs of the real entry point."""

import gc
import importlib
import os
import shutil
import tempfile

# The tests compile hundreds of programs of tiny models and run each for a few steps: JAX's switch
# for when "the cost of optimization is greater than that of running a less-optimized program"
# (XLA:CPU's LLVM at level 0, its expensive passes off), read when JAX is imported, here and in
# every command the tests run (`helpers.env` passes the environment on). Set to 0 to test programs
# compiled as users' are; the `optimized_compilation` fixture does so for one test.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

try:  # Before TensorFlow (which `big_distill` loads): torchvision's extension, which timm loads,
  importlib.import_module('timm')  # crashes the process when loaded after it.
except ImportError:  # timm and torch are test-only dependencies, for parity with the original.
  pass

from big_distill import cli  # pylint: disable=g-import-not-at-top

cli.set_cpu_xla_flags()  # As every command sets them: the tests' own programs compile the same.

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from tests.helpers import (COMPILATION_CACHE, FUNMATCH_CONFIG, SGD_6, TEACHER_CONFIG,
                           TINY_STUDENT, TINY_TEACHER, run_main, shared_run)


def pytest_configure(config):
  """Makes the session's compilation cache (`helpers.COMPILATION_CACHE`) in the main process,
  before xdist starts its workers (which inherit the variable); removed when the session ends. A
  path given in the variable is used as it is and kept. The tests' own process uses it too: a
  program compiled twice (every `build.create_run` of one model compiles the same init, whatever
  its learning rate) is compiled once."""
  if not hasattr(config, 'workerinput') and COMPILATION_CACHE not in os.environ:
    os.environ[COMPILATION_CACHE] = path = tempfile.mkdtemp(prefix='big_distill_tests_jax_')
    config.add_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))
  jax.config.update('jax_compilation_cache_dir', os.environ[COMPILATION_CACHE])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)  # As `helpers.env`.


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_protocol(item, nextitem):
  """After each test: its garbage collected, and what survives it (the caches of JAX, TensorFlow
  and the session's fixtures) frozen (gc.freeze), as `helpers` freezes what is imported: Python's
  full collections during the next tests scan only what those tests make."""
  del item, nextitem
  yield
  gc.collect()
  gc.freeze()


@pytest.fixture
def optimized_compilation():
  """The test's own programs compiled with XLA's full optimisation, as users' are: for a test
  whose tolerance is how two optimised programs round."""
  unoptimized = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', False)
  yield
  jax.config.update('jax_disable_most_optimizations', unoptimized)


@pytest.fixture(scope='session')
def fmnist_builder():
  from big_distill.data import input_pipeline
  return input_pipeline.get_builder('fashion_mnist')


@pytest.fixture(scope='session')
def teacher_run(tmp_path_factory, fmnist_builder):
  """A 10-step supervised run of the demo teacher config on a slice of Fashion-MNIST."""
  return shared_run(tmp_path_factory, 'teacher', lambda workdir: run_main(
      f'{TEACHER_CONFIG}:runlocal=True', workdir, *TINY_TEACHER))


@pytest.fixture(scope='session')
def distill_run(tmp_path_factory, teacher_run):
  """A 10-step function-matching run distilling `teacher_run` into an R14 x 1/8 student."""
  return shared_run(tmp_path_factory, 'distill', lambda workdir: run_main(
      f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run}', workdir, *TINY_STUDENT))


@pytest.fixture(scope='session')
def sgd_distill_run_4_devices(tmp_path_factory, teacher_run):
  """6 SGD steps (see `test_e2e.test_four_devices_match_one_device`) of the distillation of
  `teacher_run` on 4 devices, data parallel (replicated parameters), a loss logged and a
  checkpoint kept at every step: `test_e2e`'s 4-device run and `test_fsdp`'s replicated one."""
  return shared_run(tmp_path_factory, 'sgd_distill_4_devices', lambda workdir: run_main(
      f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run}', workdir, *TINY_STUDENT,
      *SGD_6, '--config.checkpoint_every_steps=1', '--config.keep_checkpoints=6', devices=4))
