"""Fixtures: the offline Fashion-MNIST dataset and short runs of the real entry point."""

import importlib

try:  # Before TensorFlow (which `big_distill` loads): torchvision's extension, which timm loads,
  importlib.import_module('timm')  # crashes the process when loaded after it.
except ImportError:  # timm and torch are test-only dependencies, for parity with the original.
  pass

import pytest  # pylint: disable=g-import-not-at-top

from tests.helpers import FUNMATCH_CONFIG, TEACHER_CONFIG, TINY_STUDENT, TINY_TEACHER, run_main


@pytest.fixture(scope='session')
def fmnist_builder():
  from big_distill.data import input_pipeline
  return input_pipeline.get_builder('fashion_mnist')


@pytest.fixture(scope='session')
def teacher_run(tmp_path_factory, fmnist_builder):
  """A 10-step supervised run of the demo teacher config on a slice of Fashion-MNIST."""
  workdir = str(tmp_path_factory.mktemp('teacher'))
  run_main(f'{TEACHER_CONFIG}:runlocal=True', workdir, *TINY_TEACHER)
  return workdir


@pytest.fixture(scope='session')
def distill_run(tmp_path_factory, teacher_run):
  """A 10-step function-matching run distilling `teacher_run` into an R14 x 1/8 student."""
  workdir = str(tmp_path_factory.mktemp('distill'))
  run_main(f'{FUNMATCH_CONFIG}:runlocal=True,teacher={teacher_run}', workdir, *TINY_STUDENT)
  return workdir
