"""What a person sees: progress bars and the log file on a terminal, the log stream without one."""

import re

from big_distill import workdir
from tests.helpers import TEACHER_CONFIG, TINY_TEACHER, main_command, run_in_terminal, run_main

ABSL_INFO = re.compile(r'^I\d{4} \d\d:\d\d:\d\d', re.M)  # An absl INFO line's prefix.


def test_a_terminal_shows_progress_bars_and_the_log_goes_to_a_file(tmp_path):
  run = str(tmp_path / 'run')
  code, out = run_in_terminal(main_command(f'{TEACHER_CONFIG}:runlocal=True', run, *TINY_TEACHER))
  assert code == 0, out[-3000:]
  screen = out.replace('\r', '\n')
  # What it does, first of all (before JAX and TensorFlow load).
  assert screen.split()[:2] == ['big_distill.main:', 'starting'], screen[:500]
  # The train stage's bar at its end: steps, rate, the latest loss and eval accuracy.
  final = [l for l in screen.splitlines() if l.startswith('train: 100%')][-1]
  assert re.search(r'10/10 \[\d\d:\d\d<00:00, +[\d.]+step/s, loss=[\d.]+, eval=[\d.]+%\]', final)
  assert any(l.startswith('eval:') for l in screen.splitlines())  # The eval stage has its own.
  assert not ABSL_INFO.search(screen)  # INFO goes to the file only ...
  assert 'oneDNN' not in out and 'absl::InitializeLog' not in out  # ... TensorFlow says nothing.
  log = (workdir.path(run) / workdir.LOG).read_text()
  for line in ('JAX process 0 of 1', 'Training supervised for 10 steps', 'eval/accuracy='):
    assert line in log  # ... from the first line on (logged before the workdir existed).
  assert log.index('JAX process 0 of 1') < log.index('Training supervised')


def test_without_a_terminal_the_log_stream_stays(tmp_path):
  run = str(tmp_path / 'run')
  proc = run_main(f'{TEACHER_CONFIG}:runlocal=True', run, *TINY_TEACHER,
                  '--config.total_steps=3', '--config.log_every_steps=3')
  assert 'Training supervised for 3 steps' in proc.stderr and ABSL_INFO.search(proc.stderr)
  assert '%|' not in proc.stderr  # No bars.
  assert 'oneDNN' not in proc.stderr
  assert 'Training supervised for 3 steps' in (workdir.path(run) / workdir.LOG).read_text()
