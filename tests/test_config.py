"""Config files, `:k=v` arguments and command-line overrides."""

import json
import os

import pytest

from big_distill import configlib
from conftest import TEACHER_CONFIG, TINY_TEACHER, run_main


def test_parse_arg_types_and_errors():
  arg = configlib.parse_arg('epochs=2.5,runlocal,name=x', epochs=1.0, runlocal=False,
                            name=None, steps=3)
  assert arg.epochs == 2.5 and arg.runlocal is True and arg.name == 'x' and arg.steps == 3
  assert configlib.parse_arg('steps=7', steps=3).steps == 7
  assert configlib.parse_arg(None, steps=3).steps == 3
  with pytest.raises(ValueError, match="Unknown config argument 'epoch'"):
    configlib.parse_arg('epoch=2', epochs=1.0)
  with pytest.raises(ValueError, match="runlocal='maybe' is not a bool"):
    configlib.parse_arg('runlocal=maybe', runlocal=False)


def test_overrides_reach_the_resolved_config(tmp_path):
  """`:k=v` and `--config.a.b=v` both land in DIR/config.json, which drives the run."""
  workdir = str(tmp_path / 'run')
  run_main(f'{TEACHER_CONFIG}:runlocal=True', workdir, *TINY_TEACHER, '--config.total_steps=3',
           '--config.lr=0.0123', '--config.input.batch_size=16',
           '--config.optimizer.name=sgd', '--config.log_every_steps=3')
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  assert config['lr'] == 0.0123 and config['total_steps'] == 3
  assert config['input']['batch_size'] == 16 and config['optimizer']['name'] == 'sgd'
  assert config['input']['train_split'] == 'train[:1024]'  # From runlocal=True.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    steps = [json.loads(line)['step'] for line in f if 'train/loss' in line]
  assert steps == [3]


def test_bad_override_fails_with_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / 'bad'
  proc = run_main(TEACHER_CONFIG, str(workdir), '--config.no_such_key=1', check=False)
  assert proc.returncode != 0
  assert 'no_such_key' in proc.stderr
  assert not workdir.exists()
  proc = run_main(TEACHER_CONFIG, str(workdir), '--config.input.batch_size=100', devices=3,
                  check=False)
  assert proc.returncode == 2
  assert ('big_distill: error: input.batch_size=100 is not divisible by the 3 devices; '
          'use a multiple of 3.') in proc.stderr
  assert not workdir.exists()
