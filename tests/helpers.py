"""What the tests share: paths, tiny model overrides, config loading, running the real commands,
and reading a workdir back (through `big_distill.workdir`, the owner of its layout)."""

import atexit
import fcntl
import gc
import glob
import hashlib
import multiprocessing
import os
import pty
import runpy
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import traceback
import types
from typing import Callable

import jax
import numpy as np
import tensorflow_datasets as tfds

from big_distill import build, checkpoint, configlib, workdir
from big_distill.data import input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_CONFIG = os.path.join(ROOT, 'configs', 'teacher.py')
FUNMATCH_CONFIG = os.path.join(ROOT, 'configs', 'distill.py')
# Tiny models at 28x28 keep the end-to-end runs to seconds; a student's teacher (a run) says its
# own architecture.
TINY_TEACHER = ('--config.student.model=bit:depth=14,width=0.25', '--config.input.resolution=28')
TINY_STUDENT = ('--config.student.model=bit:depth=14,width=0.125', '--config.input.resolution=28')
# SGD steps, each one's loss logged, for runs on device layouts compared step by step (Adam turns
# the rounding of another summation order into O(learning-rate) steps on weights whose gradients
# are ~0, which hides real differences).
SGD_6 = ('--config.optimizer.name=sgd', '--config.total_steps=6', '--config.log_every_steps=1')
# The environment variable holding the session's JAX compilation cache, which `conftest.py` makes
# (and removes) once for both xdist workers: the commands the tests run compile each program once
# per suite, on a fresh machine too, and nothing comes from `~/.cache/big_distill/jax`.
COMPILATION_CACHE = 'BIG_DISTILL_TESTS_COMPILATION_CACHE'


def init_variables(model, seed: int, shape: tuple[int, ...]) -> dict:
  """`model.init(PRNGKey(seed), zeros(shape))`, compiled as a run compiles its init
  (`build.init_options`): op by op, a tiny ResNet's init takes 17 s on a CPU."""
  init = jax.jit(model.init, compiler_options=build.init_options())
  return jax.device_get(init(jax.random.PRNGKey(seed), np.zeros(shape, np.float32)))


def get_config(name: str, arg: str | None = None):
  """`get_config(arg)` of `configs/<name>`."""
  return configlib.load(os.path.join(ROOT, 'configs', name), arg)


def env(devices: int = 1, **env_vars: str) -> dict[str, str]:
  """The environment of a command run by a test: `devices` CPU devices, the session's compilation
  cache (JAX's own variable: every JAX program of the command, not only `big_distill.main`'s)."""
  out = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  if COMPILATION_CACHE in os.environ:
    out['JAX_COMPILATION_CACHE_DIR'] = os.environ[COMPILATION_CACHE]
    # Every program, not only those compiling for a second or more (JAX's default): the tests'
    # commands compile the same small programs (inits, eval steps) again and again.
    out['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  return {**out, **env_vars}


def command(module: str, *args: str) -> list[str]:
  """`python -m <module> <args>`, e.g. command('big_distill.export', '--workdir=...')."""
  return [sys.executable, '-m', module, *args]


def main_command(config: str, workdir_: str, *overrides: str) -> list[str]:
  return command('big_distill.main', f'--config={config}', f'--workdir={workdir_}', *overrides)


# The modules a command imports before its first step, imported once by the forkserver that
# `run` forks commands from (what `python -m big_distill.main` spends 5-7 s of its start-up on).
PRELOAD = ('big_distill.train', 'big_distill.build', 'big_distill.reinforce', 'big_distill.export',
           'big_distill.evaluate', 'tensorflow_datasets', 'tests.helpers')
# TFDS imports its every dataset module at a process's first builder: here, so that the
# forkserver has them imported too.
tfds.builder_cls('fashion_mnist')
# What is imported by now lives as long as the process: frozen, Python's full garbage collections
# skip it. The forkserver imports this module last: its forked commands inherit the frozen
# objects, which their collections would otherwise scan (and copy, page by page) again.
gc.freeze()
# Commands that import PyTorch in their own process, which crashes after TensorFlow (conftest.py).
FRESH_ONLY = ('benchmarks.versus_pytorch',)
_forkserver = None  # (the context, the `_settings` it started with)


def _forkserver_context():
  """multiprocessing's forkserver, started once per test process in the commands' environment
  (`env`) with `PRELOAD` imported: JAX and TensorFlow read their settings when imported, and
  nothing in it has started a JAX backend, so a forked command still picks its device count."""
  global _forkserver
  if _forkserver is None:
    context, saved, server_env = multiprocessing.get_context('forkserver'), dict(os.environ), env()
    context.set_forkserver_preload(list(PRELOAD))
    os.environ.update(server_env)
    try:
      context.Process(target=os._exit, args=(0,)).start()  # Starts the server.
    finally:
      os.environ.clear()
      os.environ.update(saved)
    _forkserver = context, _settings(server_env)
  return _forkserver


def _settings(env_: dict[str, str]) -> dict[str, str]:
  """The variables JAX and TensorFlow read when imported."""
  return {k: v for k, v in env_.items() if k.startswith(('JAX_', 'TF_'))}


def _forked_command(option: str, target: str, args: list[str], env_: dict[str, str], out: str,
                    err: str, status: str):
  """In a process forked from the forkserver: `python -m module args` (`option` '-m', `target`
  the module) or `python -c code args` ('-c', the code) as a fresh interpreter runs it
  (`sys.argv`, `__main__`, the working directory, the environment, stdout and stderr on file
  descriptors 1 and 2, non-daemon threads joined and `atexit` run at the end), then its exit, its
  code also written to the file `status` (see `Started`)."""
  os.environ.clear()
  os.environ.update(env_)
  os.chdir(ROOT)
  sys.path[0] = ROOT
  for fd, path in ((1, out), (2, err)):
    opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(opened, fd)
    os.close(opened)
  code = 0
  try:
    if option == '-m':
      sys.argv = [target, *args]
      sys.modules.pop(target, None)  # As in a fresh process, `__main__` is the module's only copy.
      runpy.run_module(target, run_name='__main__', alter_sys=True)
    else:
      sys.argv = ['-c', *args]
      sys.modules['__main__'] = main = types.ModuleType('__main__')
      exec(compile(target, '<string>', 'exec'), main.__dict__)  # pylint: disable=exec-used
  except SystemExit as e:
    if isinstance(e.code, int) or e.code is None:
      code = e.code or 0
    else:
      print(e.code, file=sys.stderr)
      code = 1
  except BaseException:  # pylint: disable=broad-except  # As the interpreter: traceback, exit 1.
    traceback.print_exc()
    code = 1
  threading._shutdown()  # pylint: disable=protected-access  # What the interpreter's exit does.
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  sys.stdout.flush()
  sys.stderr.flush()
  with open(status, 'w') as f:
    f.write(str(code))
  os._exit(code)


class Started:
  """A command started by `start`: forked from the forkserver where it can be, else a fresh
  process. `subprocess.Popen`'s `pid`, `poll`, `send_signal`, `kill` and `wait`, after which
  `returncode`, `stdout` and `stderr` hold how it ended and what it wrote.

  A forked command's exit code is read from the file it writes (`_forked_command`): with commands
  waited on from two threads, one thread's `Process.start()` may read the other's exit code from
  the forkserver first (multiprocessing's `_cleanup`), and the other's `exitcode` is then 255.
  Only a command that died without writing it (a signal) reports `exitcode`."""

  def __init__(self, cmd: list[str], env_: dict[str, str], fresh: bool):
    self.args, self.returncode, self.stdout, self.stderr = cmd, None, None, None
    self._dir = tempfile.mkdtemp(prefix='big_distill_command_')
    self._out, self._err, self._status = (os.path.join(self._dir, name)
                                          for name in ('stdout', 'stderr', 'status'))
    if (not fresh and cmd[0] == sys.executable and len(cmd) > 2 and cmd[1] in ('-m', '-c') and
        cmd[2] not in FRESH_ONLY and _settings(env_) == _forkserver_context()[1]):
      self._proc = _forkserver_context()[0].Process(target=_forked_command, args=(
          cmd[1], cmd[2], cmd[3:], env_, self._out, self._err, self._status))
      self._proc.start()
    else:  # Its output read as it comes (not into files, which `ulimit -f` would limit).
      self._proc = subprocess.Popen(cmd, env=env_, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd=ROOT)
      self._readers = [threading.Thread(target=self._read, args=(pipe, path), daemon=True)
                       for pipe, path in ((self._proc.stdout, self._out),
                                          (self._proc.stderr, self._err))]
      for reader in self._readers:
        reader.start()
    self.pid = self._proc.pid

  @staticmethod
  def _read(pipe, path: str) -> None:
    with pipe, open(path, 'wb') as f:
      shutil.copyfileobj(pipe, f)

  def poll(self) -> int | None:
    if isinstance(self._proc, subprocess.Popen):
      return self._proc.poll()
    if self._proc.exitcode is None:
      return None
    return int(open(self._status).read()) if os.path.exists(self._status) else self._proc.exitcode

  def send_signal(self, sig: int) -> None:
    if self.poll() is None:
      os.kill(self.pid, sig)

  def kill(self) -> None:
    self.send_signal(signal.SIGKILL)

  def wait(self, timeout: float | None = None) -> int:
    if isinstance(self._proc, subprocess.Popen):
      self._proc.wait(timeout)
      for reader in self._readers:
        reader.join()
    else:
      self._proc.join(timeout)
      if self._proc.exitcode is None:
        raise subprocess.TimeoutExpired(self.args, timeout)
    if self.returncode is None:
      self.returncode = self.poll()
      self.stdout, self.stderr = (open(path, encoding='utf-8', errors='replace').read()
                                  for path in (self._out, self._err))
      shutil.rmtree(self._dir, ignore_errors=True)
    return self.returncode


def start(cmd: list[str], *, devices: int = 1, fresh: bool = False, **env_vars: str) -> Started:
  """Starts a command from the repository root (so `benchmarks` imports) as a fresh process
  would, in the background: `python -m` and `python -c` commands are forked from a forkserver
  that has their modules imported (`_forkserver_context`), unless they change what JAX or
  TensorFlow read on import, are `FRESH_ONLY`, or `fresh` (a command that checks what it imports);
  anything else runs in a fresh process."""
  return Started(cmd, env(devices, **env_vars), fresh)


def finish(procs: list[Started], timeout: int = 600) -> list[str]:
  """Waits for commands started together; fails, with their stderr, if one fails or hangs
  (killing the rest). Returns each one's stderr."""
  try:
    for p in procs:
      p.wait(timeout)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p in procs:
    assert p.returncode == 0, '\n'.join(q.stderr[-3000:] for q in procs if q.stderr)
  return [p.stderr for p in procs]


def run(cmd: list[str], *, devices: int = 1, check: bool = True, timeout: int = 600,
        fresh: bool = False, **env_vars: str) -> subprocess.CompletedProcess:
  """Runs a command as `start` starts it, and waits for it."""
  proc = start(cmd, devices=devices, fresh=fresh, **env_vars)
  try:
    proc.wait(timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    raise
  if check and proc.returncode != 0:
    raise AssertionError(f'{" ".join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}')
  return subprocess.CompletedProcess(cmd, proc.returncode, proc.stdout, proc.stderr)


def run_main(config: str, workdir_: str, *overrides: str, devices: int = 1,
             check: bool = True, **env_vars: str) -> subprocess.CompletedProcess:
  """Runs `python -m big_distill.main` in a fresh process with `devices` CPU devices (and the
  environment variables `env_vars`)."""
  return run(main_command(config, workdir_, *overrides), devices=devices, check=check, **env_vars)


def shared_run(tmp_path_factory, name: str, make: Callable[[str], object]) -> str:
  """The workdir `name`, made by `make(workdir)` once per session: by the first of pytest-xdist's
  workers to ask, while the others wait for it (xdist's pattern for session fixtures, with a file
  lock), so both workers' tests read one run. The tests only read it."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # The session's directory, above each worker's own.
  path, done = root / name, root / f'{name}.done'
  with open(root / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      shutil.rmtree(path, ignore_errors=True)  # What a failed attempt left.
      make(str(path))
      done.touch()
  return str(path)


def read_metrics(workdir_: str) -> list[dict]:
  return workdir.read_metrics(workdir_)


def metric(records: list[dict], key: str) -> dict[int, float]:
  """{step: value} of one key."""
  return {r['step']: r[key] for r in records if key in r}


def saved_steps(workdir_: str) -> list[int]:
  return checkpoint.saved_steps(workdir_)


def params(workdir_: str, step: int | str = 'latest') -> list[np.ndarray]:
  """The leaves of a run's student parameters at `step`."""
  return jax.tree_util.tree_leaves(checkpoint.read_variables(workdir_, step)[0]['params'])


def eval_images(input_cfg, builder) -> tuple[np.ndarray, np.ndarray]:
  """The eval split's images and labels as a run's eval pipeline gives them (padding dropped)."""
  batches = list(input_pipeline.eval_batches(
      builder, input_cfg.eval_split, batch_size=input_cfg.eval_batch_size,
      resolution=input_cfg.resolution, central_crop=input_cfg.central_crop).as_numpy_iterator())
  mask = np.concatenate([b['mask'] for b in batches]).astype(bool)
  return (np.concatenate([b['image'] for b in batches])[mask],
          np.concatenate([b['label'] for b in batches])[mask])


def error_lines(stderr: str) -> list[str]:
  """The lines of a command's stderr that report an error."""
  return [l for l in stderr.splitlines() if 'error:' in l.lower()]


def snapshot(path: str) -> dict[str, tuple[int, int, str]] | None:
  """Every file under `path` with its size, modification time and SHA-256 (directories: ''),
  None if `path` does not exist: equal snapshots mean byte-for-byte the same tree."""
  if not os.path.exists(path):
    return None
  out = {}
  for name in glob.glob(os.path.join(path, '**'), recursive=True):
    st = os.stat(name)
    digest = ''
    if os.path.isfile(name):
      with open(name, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    out[os.path.relpath(name, path)] = (st.st_size, st.st_mtime_ns, digest)
  return out


def run_in_terminal(cmd: list[str], *, columns: int = 120, timeout: int = 600,
                    **env_vars: str) -> tuple[int, str]:
  """Runs a command with a pseudo-terminal of `columns` x 40 as stdin, stdout and stderr, as a
  person at a terminal would; returns its exit code and everything it printed."""
  master, slave = pty.openpty()
  fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 40, columns, 0, 0))
  proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
                          env=env(**env_vars), close_fds=True)
  os.close(slave)
  out, deadline = b'', time.time() + timeout
  while time.time() < deadline:
    ready, _, _ = select.select([master], [], [], 1.0)
    if not ready:
      continue
    try:
      data = os.read(master, 65536)
    except OSError:  # The terminal closed: the command has exited.
      break
    if not data:
      break
    out += data
  os.close(master)
  code = proc.wait(timeout=max(1, deadline - time.time()))
  return code, out.decode(errors='replace')


def write_mixed_folder(root: str) -> dict[str, str]:
  """`root/train/{a,b}/` and `root/test/{a,b}/` holding every kind of file users have, cut from
  real photographs, and the files operating systems leave in folders; relative path -> kind."""
  # pylint: disable=g-import-not-at-top  # Only the tests of users' images need these.
  import matplotlib
  from PIL import Image
  samples = os.path.join(matplotlib.get_data_path(), 'sample_data')  # Real photographs.
  photo = Image.open(os.path.join(samples, 'grace_hopper.jpg')).convert('RGB')
  crops = [photo.crop((x, 60 + 20 * x % 90, x + 56, 124 + 20 * x % 90)) for x in range(0, 400, 25)]
  cutout = Image.open(os.path.join(samples, 'Minduka_Present_Blue_Pack.png'))
  kinds = {}

  def add(rel, image, kind, **kwargs):
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    image.save(os.path.join(root, rel), **kwargs)
    kinds[rel] = kind

  for split, offset in (('train', 0), ('test', 8)):
    for c, cls in enumerate('ab'):
      i = offset + 4 * c
      add(f'{split}/{cls}/photo.jpg', crops[i], 'as is')
      add(f'{split}/{cls}/grey.png', crops[i + 1].convert('L'), 'as is')
      exif = Image.Exif()
      exif[0x0112] = 6  # Taken with the phone turned: rotate 90 degrees clockwise to view.
      add(f'{split}/{cls}/phone.jpg', crops[i + 2], 'converted', exif=exif)
      add(f'{split}/{cls}/cutout.png', cutout.rotate(90 * c), 'converted')
      add(f'{split}/{cls}/screen.webp', crops[i + 3].convert('RGBA'), 'converted', lossless=True)
      add(f'{split}/{cls}/scan.tif', crops[i + 3].convert('L'), 'converted')
      add(f'{split}/{cls}/anim.gif', crops[i], 'converted', save_all=True,
          append_images=[crops[i + 1]])
      add(f'{split}/{cls}/print.jpg', crops[i + 1].convert('CMYK'), 'converted')
      with open(os.path.join(root, split, cls, 'Thumbs.db'), 'wb') as f:
        f.write(b'\xd0\xcf\x11\xe0 a thumbnail cache')
      with open(os.path.join(root, split, cls, 'desktop.ini'), 'w') as f:
        f.write('[.ShellClassInfo]\n')
  return kinds
