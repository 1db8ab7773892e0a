"""Every code block of README.md and docs/**/*.md runs as written, or names the test that runs it.

Each bash block is first expanded by bash itself, with stand-ins for the programs it calls that
record their arguments: that gives each command as the shell would run it (loops, variables,
quotes, `&&`). Then each command
- runs here in a cheap form: `big_distill.main` with `--dry_run` appended (every check a run makes,
  nothing written), the demo with its two training runs recorded and dry-run, `python -c`
  snippets, the launchers with `DRY_RUN=1` (`sbatch`'s options dropped; the `big_distill.main`
  command they print gets the static checks below). The test's directory stands in for `/tmp/`
  and `/data/`, and small files for the files a command names (a teacher's `.npz`, a teacher's
  run, a folder of images). The `python -m` and `python -c` commands run in one process with 8
  CPU devices, which imports JAX and TensorFlow once, but for the processes of a multi-process
  run, which run together, with their block's XLA_FLAGS and a free port for the coordinator;
- or is run by a test that the block's section names (`COVERED`: the test exists, its source names
  the command or the page, and the page names it), after the static checks here: its module
  exists and defines every flag the command gives, and its config file loads with its arguments
  and overrides;
- or, for Google Cloud's CLI and pip, which need a network, is only listed (`EXTERNAL`).
Python blocks run here (`config`, which they set, a config file's; the optimizer it then builds
takes a step) or are covered likewise. Blocks without a language are listings (no commands), and
usage lines (`SYNOPSIS`, with placeholders) get the static checks.
"""

import ast
import dataclasses
import glob
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from big_distill import configlib, optim, workdir as workdir_lib
from big_distill.models import bit
from big_distill.optim import shampoo
from tests.helpers import ROOT, TEACHER_CONFIG, env, snapshot

PAGES = ('README.md', *sorted(os.path.relpath(p, ROOT) for p in glob.glob(
    os.path.join(ROOT, 'docs', '**', '*.md'), recursive=True)))
LISTING, SYNOPSIS = 'listing', 'synopsis'
# The README's block of the demo's two stages by hand (the demo runs them, with its workdirs).
DEMO_BY_HAND = ('README.md', 'python -m big_distill.main --config=configs/teacher.py')
# Each block (its page and how its first line starts): LISTING, SYNOPSIS, or the commands (by
# module, script or `python` for a Python block) that a named test runs; its other commands run
# here. A block that is not in this table fails the test.
COVERED = {
    ('README.md', 'bash launch/setup.sh && .venv/bin/python -m big_distill.demo'):
        {'launch/setup.sh': 'tests/test_launch.py'},
    ('README.md', 'bash launch/setup.sh && .venv/bin/python -m pytest'):
        {'launch/setup.sh': 'tests/test_launch.py', 'pytest': '.ci/run'},
    ('README.md', 'python -m big_distill.main --config=configs/NAME.py'): SYNOPSIS,
    DEMO_BY_HAND: {},
    ('README.md', '/data/pets/train/cat/0001.jpg'): LISTING,
    ('README.md', 'python -m big_distill.main --workdir=/tmp/my_teacher'):
        {'big_distill.main': 'tests/test_readme.py'},
    ('README.md', 'python -m big_distill.main --workdir=/tmp/my_student'):
        {'big_distill.main': 'tests/test_readme.py'},
    ('README.md', 'python -m big_distill.evaluate --workdir=/tmp/my_student'):
        {'big_distill.evaluate': 'tests/test_readme.py', 'big_distill.report': 'tests/test_readme.py'},
    ('README.md', 'python -m big_distill.predict --workdir=/tmp/my_student'):
        {'big_distill.predict': 'tests/test_readme.py'},
    ('README.md', 'python -m big_distill.export'):
        {m: 'tests/test_readme.py' for m in ('big_distill.export', 'big_distill.predict',
                                             'big_distill.deploy')},
    ('README.md', 'python -m big_distill.main --config=configs/flowers_funmatch.py'): {},
    ('README.md', 'python -m big_distill.reinforce'):
        {m: 'tests/test_reinforce.py' for m in ('big_distill.reinforce', 'big_distill.main')},
    ('README.md', 'python -m big_distill.reproduce'): {
        'big_distill.reproduce':
            'tests/test_reproduce.py::test_a_stopped_study_resumes_and_reports_what_has_finished'},
    ('docs/data.md', '/data/pets/'): LISTING,
    ('docs/data.md', 'DATA_DIR/image_folder/'): LISTING,
    ('docs/data.md', 'python -c'): {},
    **{('docs/deployment.md', start): {m: 'tests/test_deployment_doc.py' for m in modules}
       for start, modules in (
           ('python -m big_distill.main', ('big_distill.main', 'big_distill.export')),
           ('import json\nimport tensorflow', ('python',)),
           ('import json\nimport numpy', ('python',)),
           ('import tensorflow as tf\nfrom big_distill', ('python',)),
           ('python -m big_distill.deploy', ('big_distill.deploy',)))},
    ('docs/parallelism.md', 'python -m big_distill.main'): {},
    ('docs/parallelism.md', 'for i in 0 1'): {},
    ('docs/parallelism.md', 'gcloud compute tpus'): {},
    ('docs/parallelism.md', 'bash launch/setup.sh'): {'launch/setup.sh': 'tests/test_launch.py'},
    ('docs/performance.md', 'python -m benchmarks.step_throughput --input=false --rounds=5'): {
        'benchmarks.step_throughput': 'tests/test_benchmarks.py::'
                                      'test_step_throughput_reports_every_part_and_consistent_ratios'},
    ('docs/performance.md', 'python -m big_distill.demo'): {
        'benchmarks.students': 'tests/test_benchmarks.py::test_students_reports_each_runs_student',
        'benchmarks.step_throughput': 'tests/test_benchmarks.py::'
                                      'test_step_throughput_reports_every_part_and_consistent_ratios'},
    ('docs/performance.md', 'python -m benchmarks.step_throughput --input=false --rounds=9'): {
        'benchmarks.step_throughput': 'tests/test_benchmarks.py::'
                                      'test_step_throughput_reports_every_part_and_consistent_ratios'},
    ('docs/performance.md', 'python -m benchmarks.step_throughput --input=false --rounds=3'): {
        'benchmarks.step_throughput': 'tests/test_benchmarks.py::'
                                      'test_step_throughput_reports_every_part_and_consistent_ratios'},
    ('docs/performance.md', 'python -m benchmarks.accelerator'): {
        'benchmarks.accelerator': 'tests/test_benchmarks.py::'
                                  'test_accelerator_check_writes_every_case_in_tiny_mode'},
    ('docs/performance.md', 'python -m benchmarks.versus_pytorch --rounds=5 --steps=2 --setup='): {
        'benchmarks.versus_pytorch': 'tests/test_benchmarks.py::'
                                     'test_versus_pytorch_times_the_same_models_on_the_same_weights'},
    ('docs/performance.md', 'python -m benchmarks.versus_pytorch --rounds=3 --steps=2 "--setup=|'): {
        'benchmarks.versus_pytorch': 'tests/test_benchmarks.py::'
                                     'test_versus_pytorch_times_the_same_models_on_the_same_weights'},
    ('docs/performance.md', 'python -m benchmarks.compile_time'): {
        'benchmarks.compile_time': 'tests/test_benchmarks.py::'
                                   'test_compile_time_compiles_once_and_loads_from_the_cache_the_'
                                   'second_time'},
    ('docs/performance.md', 'for dtype in'): {
        'benchmarks.scaling': 'tests/test_benchmarks.py::test_memory_parts_fit_and_remat'},
    ('docs/reference.md', 'python -m big_distill.convert'): {
        'big_distill.convert': ('tests/test_convert.py::test_timm_vit_to_big_vision_npz_and_back',
                                'tests/test_convert.py::test_a_runs_student_goes_to_timm')},
    ('docs/reference.md', 'python -m big_distill.report'): SYNOPSIS,
    ('docs/reference.md', 'python -m big_distill.evaluate'): SYNOPSIS,
    ('docs/reinforce.md', '# K = 100 views'):
        {m: 'tests/test_reinforce.py' for m in ('big_distill.reinforce', 'big_distill.main')},
    ('docs/reinforce.md', 'DIR/reinforcement.json'): LISTING,
    ('docs/reinforce.md', '# mine.py'): {
        'python': 'tests/test_reinforce.py::'
                  'test_a_timm_teacher_in_pytorch_teaches_as_its_converted_weights'},
    ('docs/reproduction/results.md', 'python -m big_distill.reproduce'): {
        'big_distill.reproduce':
            'tests/test_reproduce.py::test_a_stopped_study_resumes_and_reports_what_has_finished'},
    ('docs/reinforce.md', 'W=/tmp/reinforce_study T=/tmp/big_distill_demo/teacher\n'
                          'python -m big_distill.reproduce --workdir=$W --teacher=$T '
                          '--train_examples=1000'): {
        'big_distill.reproduce': 'tests/test_reproduce.py::test_students_of_every_length_replay_'
                                 'one_reinforcement_and_the_report_says_its_cost'},
    ('docs/reinforce.md', 'W=/tmp/reinforce_study T=/tmp/big_distill_demo/teacher\n'
                          'python -m big_distill.reproduce --workdir=$W --teacher=$T '
                          '--train_examples=5000'): {
        'big_distill.reproduce': 'tests/test_reproduce.py::test_students_of_every_length_replay_'
                                 'one_reinforcement_and_the_report_says_its_cost'},
    ('docs/reproduction/small_data.md', 'W=/tmp/small_data'): {
        'big_distill.reproduce':
            'tests/test_reproduce.py::test_a_stopped_study_resumes_and_reports_what_has_finished'},
    ('docs/shampoo.md', 'config.lr = 1e-3'): {},
    ('docs/shampoo.md', 'python -m benchmarks.shampoo_vs_adam --config'): {
        'benchmarks.shampoo_vs_adam': 'tests/test_benchmarks.py::'
                                      'test_shampoo_vs_adam_runs_each_setting_through_the_training_loop'},
    **{('docs/shampoo.md', start): {
        'benchmarks.shampoo_vs_adam_sweep': 'tests/test_benchmarks.py::test_shampoo_vs_adam_sweep_'
                                            'reports_every_setting_at_the_end_of_its_schedule'}
       for start in ('python -m benchmarks.shampoo_vs_adam_sweep \\',
                     'python -m benchmarks.shampoo_vs_adam_sweep --config')},
}
# Commands that need a network or a cloud account, which no test runs.
EXTERNAL = {'gcloud': 'Google Cloud\'s CLI creating a TPU VM',
            'pip': 'pip installing jax[cuda12] from PyPI'}
# What runs here; every other command must be covered.
RUN_HERE = ('big_distill.main', 'big_distill.demo', 'python -c', 'launch/tpu_pod.sh',
            'launch/gpu_slurm.sh', 'python')
# The stand-ins: a teacher's weights named by a command (a BiT R14 x1/4 `.npz` with the head of
# its dataset's classes), and a teacher's run (the `config.json` of `configs/teacher.py`).
TEACHER_FILES = {'R152x2_T_flowers128.npz': 102, 'R152x2_T_224.npz': 1000}
TEACHER_RUNS = ('fmnist_teacher', 'demo/teacher', 'big_distill_demo/teacher')
# The demo's metrics, read back from its two (dry-run) stages.
DEMO_METRICS = {'eval/accuracy': 0.913, 'eval/student_accuracy': 0.8904,
                'eval/agreement_top1': 0.9397}


@dataclasses.dataclass(frozen=True)
class Command:
  """One command of a block as the shell runs it: the program as called, its arguments, and the
  XLA_FLAGS it is given. A Python block is one command, program `python`, its code the argument."""
  program: str
  args: tuple[str, ...]
  xla_flags: str = ''

  @property
  def name(self) -> str:
    """What runs: a module (`big_distill.main`), `python -c`, a script (`launch/setup.sh`), a
    program (`gcloud`), or `python` (a Python block)."""
    base = os.path.basename(self.program)
    if base in ('python', 'python3'):
      if not self.args or self.args[0] not in ('-m', '-c'):
        return 'python'
      return self.args[1] if self.args[0] == '-m' else 'python -c'
    if base in ('bash', 'sbatch'):
      return next(a for a in self.args if not a.startswith('-'))
    return self.program

  def flag(self, name: str) -> str | None:
    return next((a.split('=', 1)[1] for a in self.args if a.startswith(f'--{name}=')), None)


@dataclasses.dataclass(frozen=True)
class Block:
  page: str
  line: int  # Of the opening fence.
  language: str
  code: str
  section: str  # The text from the heading above the block to the next heading.
  commands: tuple[Command, ...] = ()

  @property
  def where(self) -> str:
    return f'{self.page}:{self.line}'


def _sections(lines: list[str]) -> list[int]:
  """The indices of the heading lines outside code blocks."""
  headings, fenced = [], False
  for i, line in enumerate(lines):
    if line.lstrip().startswith('```'):
      fenced = not fenced
    elif not fenced and line.startswith('#'):
      headings.append(i)
  return headings


def _blocks(page: str) -> list[Block]:
  """The fenced blocks of a page (indented ones too), without their commands."""
  with open(os.path.join(ROOT, page), encoding='utf-8') as f:
    text = f.read()
  lines = text.splitlines()
  headings = _sections(lines) + [len(lines)]
  blocks = []
  for m in re.finditer(r'^( *)```(\w*)\n(.*?)^ *```', text, re.S | re.M):
    line = text.count('\n', 0, m.start())
    start = max(h for h in [0, *headings] if h <= line)
    end = min(h for h in headings if h > line)
    code = '\n'.join(l[len(m.group(1)):] for l in m.group(3).splitlines())
    blocks.append(Block(page, line + 1, m.group(2), code, '\n'.join(lines[start:end])))
  return blocks


def _sandbox(root) -> tuple[str, dict[str, str]]:
  """A directory holding stand-ins for every program the docs call, which record their arguments,
  and the environment to expand a block in (PATH: the stand-ins alone)."""
  fake = (f'#!/bin/bash\nf=$({shutil.which("mktemp")} "$RECORD/$({shutil.which("date")} '
          '+%s%N)-XXXXXX")\nprintf \'%s\\0\' "$0" "${XLA_FLAGS-}" "$@" > "$f"\n')
  work, record = root / 'work', root / 'record'
  names = [f'bin/{p}' for p in ('python', 'python3', 'bash', 'sbatch', 'gcloud')]
  names += ['work/.venv/bin/python', *(f'work/launch/{s}' for s in os.listdir(
      os.path.join(ROOT, 'launch')))]
  for name in names:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(fake)
    (root / name).chmod(0o755)
  record.mkdir()
  # $TEACHER: shampoo.md's name for the demo's teacher run.
  return str(work), {'PATH': str(root / 'bin'), 'RECORD': str(record),
                     'TEACHER': '/tmp/big_distill_demo/teacher'}


def _expand(code: str, cwd: str, environ: dict[str, str]) -> tuple[Command, ...]:
  """The commands of a bash block, as bash runs them (the stand-ins record them)."""
  proc = subprocess.run(['/bin/bash', '-u', '-c', code], cwd=cwd, env=environ,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0 and not proc.stderr, proc.stderr
  commands = []
  for name in sorted(os.listdir(environ['RECORD'])):
    path = os.path.join(environ['RECORD'], name)
    with open(path) as f:
      program, xla_flags, *args = f.read().split('\0')[:-1]
    os.remove(path)
    if program.startswith(environ['PATH']):
      program = os.path.basename(program)
    commands.append(Command(program, tuple(args), xla_flags))
  return tuple(commands)


@pytest.fixture(scope='module')
def blocks(tmp_path_factory) -> list[Block]:
  """Every block of every page, each with its commands."""
  cwd, environ = _sandbox(tmp_path_factory.mktemp('sandbox'))
  out = []
  for page in PAGES:
    for block in _blocks(page):
      synopsis = any(COVERED[k] == SYNOPSIS for k in COVERED
                     if k[0] == page and block.code.startswith(k[1]))
      if block.language == 'bash' and not synopsis:  # A usage line is no command.
        block = dataclasses.replace(block, commands=_expand(block.code, cwd, environ))
      elif block.language == 'python':
        block = dataclasses.replace(block, commands=(Command('python', (block.code,)),))
      out.append(block)
  return out


def _entry(block: Block) -> str | dict[str, str]:
  keys = [k for k in COVERED if k[0] == block.page and block.code.startswith(k[1])]
  assert len(keys) == 1, (f'{block.where}: {len(keys)} entries of COVERED; a new example? Run it '
                          'here, or name the test that runs it under the block; list it.')
  return COVERED[keys[0]]


def _run_here(blocks: list[Block], name: str) -> list[Command]:
  """The commands called `name` that run here (those of blocks that do not name their test)."""
  return [c for b in blocks if isinstance(_entry(b), dict) for c in b.commands
          if c.name == name and name not in _entry(b)]


def _function_source(text: str, name: str) -> str | None:
  """The source of the module-level function `name` of the module `text`."""
  node = next((n for n in ast.parse(text).body
               if isinstance(n, ast.FunctionDef) and n.name == name), None)
  return node and ast.get_source_segment(text, node)


def _problems(block: Block) -> list[str]:
  """What is wrong with how a block is run or covered."""
  entry = _entry(block)
  if entry == LISTING:
    return [] if block.language == '' and 'python' not in block.code else ['not a listing']
  if block.language not in ('bash', 'python'):
    return [f'a block of {block.language or "no language"} with commands']
  if entry == SYNOPSIS:
    return [] if re.search(r'\[|[A-Z]{3,}', block.code) else ['a usage line without placeholders']
  names = {c.name for c in block.commands}
  problems = [f'{n} is not in the block' for n in set(entry) - names]
  for command in block.commands:
    tests = entry.get(command.name, ())
    if not tests and command.name not in (*RUN_HERE, *EXTERNAL):
      problems.append(f'{command.name} neither runs here nor names the test that runs it')
    for test in (tests,) if isinstance(tests, str) else tests:
      problems += _test_problems(test, command, block)
  return list(dict.fromkeys(problems))


def _test_problems(test: str, command: Command, block: Block) -> list[str]:
  """What is wrong with `test` as the test that runs `command`: it must be named in the block's
  section, exist, and name the command (its module's last part, its script; `big_distill.main`
  also through `tests/helpers.py`'s `run_main` or `main_command`) or the page."""
  problems = [] if test in block.section else [f'name {test} next to the block']
  path, _, function = test.partition('::')
  if path == '.ci/run':  # CI runs the command itself.
    with open(os.path.join(ROOT, path), encoding='utf-8') as f:
      ran = block.code.strip() in f.read().splitlines()
    return problems + ([] if ran else [f'{path} does not run {block.code.strip()!r}'])
  if not os.path.isfile(os.path.join(ROOT, path)):
    return problems + [f'no {path}']
  with open(os.path.join(ROOT, path), encoding='utf-8') as f:
    source = f.read()
  if function:
    source = _function_source(source, function)
  mentions = ((command.name, 'run_main(', 'main_command(') if command.name == 'big_distill.main'
              else (os.path.basename(command.name).rsplit('.', 1)[-1],))
  mentions += (os.path.basename(block.page),)
  if not source:
    problems.append(f'no test {test}')
  elif not any(m in source for m in mentions):
    problems.append(f'{test} does not run {command.name}')
  return problems


def test_every_block_runs_here_or_names_its_test(blocks):
  assert {'README.md', 'docs/data.md', 'docs/shampoo.md'} <= {b.page for b in blocks}
  problems = [f'{b.where}: {p}' for b in blocks for p in _problems(b)]
  assert not problems, '\n'.join(problems)
  matched = [k for b in blocks for k in COVERED if k[0] == b.page and b.code.startswith(k[1])]
  assert sorted(matched) == sorted(COVERED), 'an entry of COVERED for no block, or for several'
  assert {c.name for b in blocks for c in b.commands if c.name in EXTERNAL} == set(EXTERNAL)


def _defined_flags(module: str) -> set[str]:
  """The flags a command module defines (`flags.DEFINE_*`, those of the modules whose
  `define_flags()` it calls, `config` when `cli.run` takes a config), read from its source."""
  path = os.path.join(ROOT, *module.split('.')) + '.py'
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read())
  names = set()
  for node in ast.walk(tree):
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
      continue
    attr, owner = node.func.attr, getattr(node.func.value, 'id', '')
    if attr.startswith('DEFINE_') and node.args and isinstance(node.args[0], ast.Constant):
      names.add(node.args[0].value)
      if attr in ('DEFINE_bool', 'DEFINE_boolean'):
        names.add(f'no{node.args[0].value}')
    elif attr == 'define_flags' and owner and owner != 'define_flags':
      names |= _defined_flags(f'{module.split(".")[0]}.{owner}')
    elif (owner, attr) == ('cli', 'run') and any(k.arg == 'config' for k in node.keywords):
      names.add('config')
  return names


def _check_statically(where: str, module: str, args: tuple[str, ...]) -> None:
  """The module exists, defines every flag in `args`, and its `--config` (a file of this
  checkout with its arguments) loads and takes the `--config.*` overrides."""
  assert os.path.isfile(os.path.join(ROOT, *module.split('.')) + '.py'), f'{where}: no {module}'
  defined = _defined_flags(module)
  given = [a[2:].split('=', 1)[0] for a in args if a.startswith('--')]
  unknown = [f for f in given if f not in defined and not f.startswith('config.')]
  assert not unknown, f'{where}: {module} has no flag {unknown}'
  config = next((a.split('=', 1)[1] for a in args if a.startswith('--config=')), None)
  if config:
    path, _, arg = config.partition(':')
    configlib.override(configlib.load(os.path.join(ROOT, path), arg or None),
                       [a for a in args if a.startswith('--config.')])


def test_every_command_names_its_module_flags_and_config(blocks):
  checked = 0
  for block in blocks:
    if _entry(block) == SYNOPSIS:  # E.g. `--config=configs/NAME.py[:k=v,...] --step=best|N`.
      for line in block.code.replace('\\\n', ' ').splitlines():
        module = re.search(r'python -m (\S+)', line).group(1)
        flags = re.findall(r'(--[a-z_]+)(?=[=\s\]]|$)', line)
        _check_statically(block.where, module, tuple(flags))
        checked += 1
      continue
    for command in block.commands:
      if command.name.startswith(('big_distill.', 'benchmarks.')):
        _check_statically(block.where, command.name, command.args[2:])
        checked += 1
  assert checked >= 40


# The commands that run here, in one process: each module's `__main__` in turn (runpy), absl's
# flags reset between them, stdout and stderr of each into files of its own. The demo's stages
# (`runs.run_command`) are recorded and run the same way, dry-run, and each leaves the demo's
# metrics in its workdir for the demo to read back.
DRIVER = r'''
import contextlib, json, os, runpy, sys, traceback
from absl import app, flags, logging  # logging: absl's own flags, kept.
app.define_help_flags()  # app.run defines them once: kept too.
FLAGS = flags.FLAGS
BASE = set(FLAGS)
commands, metrics, out_dir = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
results, running = [], []  # Every command run, and the indices of those running now.


@contextlib.contextmanager
def captured(prefix):
  sys.stdout.flush(); sys.stderr.flush()
  saved = os.dup(1), os.dup(2)
  with open(prefix + '.out', 'wb') as out, open(prefix + '.err', 'wb') as err:
    os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
    try:
      yield
    finally:
      sys.stdout.flush(); sys.stderr.flush()
      os.dup2(saved[0], 1); os.dup2(saved[1], 2)
      os.close(saved[0]); os.close(saved[1])


def run(name, args):
  prefix = os.path.join(out_dir, str(len(results)))
  result = dict(name=name, args=args, stage_of=running[-1] if running else None, prefix=prefix,
                code=0)
  running.append(len(results))
  results.append(result)
  saved_flags, saved_argv = {n: FLAGS[n] for n in FLAGS}, sys.argv
  for n in saved_flags:
    if n not in BASE and n in FLAGS:
      delattr(FLAGS, n)
  sys.argv = ['-c', *args[1:]] if name == 'python -c' else [name, *args]
  with captured(prefix):
    try:
      if name == 'python -c':
        exec(compile(args[0], '<string>', 'exec'), {'__name__': '__main__'})
      else:
        runpy.run_module(name, run_name='__main__')
    except SystemExit as e:
      result['code'] = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:  # pylint: disable=broad-except
      traceback.print_exc()
      result['code'] = 1
  for n in list(FLAGS):
    if n not in BASE:
      delattr(FLAGS, n)
  for n, flag in saved_flags.items():
    if n not in FLAGS:
      FLAGS[n] = flag
  sys.argv = saved_argv
  running.pop()
  return result['code']


from big_distill import errors, runs  # pylint: disable=g-import-not-at-top


def stage(name, module, *args):
  code = run(module, [*args, '--dry_run'])
  if code:
    raise errors.StageFailed(code)
  workdir = next(a.split('=', 1)[1] for a in args if a.startswith('--workdir='))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.write(json.dumps(dict(step=1, **metrics)) + '\n')
  return 0.0


runs.run_command = stage
for name, args in commands:
  run(name, args)
with open(os.path.join(out_dir, 'results.json'), 'w') as f:
  json.dump(results, f)
'''
DEVICES = 8  # The shared process's simulated CPU devices: the most a command asks for (`fsdp=8`).


def _standins(root) -> None:
  """In `root`, the directory the commands run in and their `/tmp/`: this checkout's `configs/`,
  the teachers' `.npz` files and runs, and `/data/pets` (`root/data/pets`) as a folder of images."""
  (root / 'configs').symlink_to(os.path.join(ROOT, 'configs'))
  for name, classes in TEACHER_FILES.items():
    model = bit.ResNetV2(depth=14, width=0.25, num_classes=classes)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    bit.save_bit_npz(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype),
                                            shapes['params']), str(root / name))
  for run in TEACHER_RUNS:
    (root / run).mkdir(parents=True)
    workdir_lib.write_config(configlib.load(TEACHER_CONFIG), str(root / run))
  for split, count in (('train', 3), ('test', 2)):
    for c, cls in enumerate(('cat', 'dog')):
      (root / 'data' / 'pets' / split / cls).mkdir(parents=True)
      for i in range(count):
        Image.new('RGB', (24, 20), (200 * c, 40 * i, 90)).save(
            root / 'data' / 'pets' / split / cls / f'{i:04d}.{("jpg", "png")[i % 2]}')


def _here(arg: str, root, port: int) -> str:
  """`arg` with the stand-ins: `root` for `/tmp/` and `/data/`, a free port for the
  coordinator's."""
  arg = arg.replace('/tmp/', f'{root}/').replace('/data/', f'{root}/data/')
  return re.sub(r'(--coordinator_address=[\w.]+:)\d+', rf'\g<1>{port}', arg)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _plan(where: str, stdout: str) -> dict:
  plan = json.loads(stdout)
  assert {'config', 'student', 'data', 'steps'} <= set(plan), f'{where}: {stdout[:500]}'
  return plan


def _as_running(commands: list[dict]) -> list[tuple[str, list[str]]]:
  """The demo's stages, or the README's two commands of Running, with the checkout's path and
  the two workdirs left out."""
  workdirs = [a.split('=', 1)[1] for c in commands for a in c['args'] if a.startswith('--workdir=')]
  def plain(arg):
    for name, workdir in zip(('TEACHER', 'STUDENT'), workdirs):
      arg = arg.replace(workdir, name)
    return arg.replace(f'{ROOT}/', '')
  return [(c['name'], [plain(a) for a in c['args']]) for c in commands]


def test_the_python_commands_run_here(blocks, tmp_path):
  """Every `python -m` and `python -c` command that runs here, as written, `main` with
  `--dry_run`: in one process (with 8 CPU devices), but for the processes of a multi-process run,
  which run together, each with its block's XLA_FLAGS. Each exits 0; a dry run prints its plan and
  writes nothing; the demo runs the two commands of the README's Running section and prints the
  metrics it reads back; `python -c` prepares its folder of images."""
  _standins(tmp_path)
  [by_hand] = [b for b in blocks
               if b.page == DEMO_BY_HAND[0] and b.code.startswith(DEMO_BY_HAND[1])]
  shared, together = [], {}  # Multi-process runs: their commands by block.
  for block in blocks:
    port = _free_port()
    for command in block.commands:
      if command.name not in ('big_distill.main', 'big_distill.demo', 'python -c') or (
          command.name in _entry(block)):
        continue
      args = [_here(a, tmp_path, port) for a in command.args[1 if command.name == 'python -c'
                                                               else 2:]]
      if command.name == 'big_distill.main':
        args.append('--dry_run')
      if command.xla_flags or command.flag('num_processes'):
        together.setdefault(block.where, []).append((command, args))
      else:
        shared.append((block.where, command.name, args))
  assert len(shared) >= 8 and together
  # The workdirs that the dry runs leave as they were: all of `main`'s, but for the demo's stages
  # (their stand-ins leave metrics there for the demo to read back).
  workdir = lambda args: [str(tmp_path / a.split('=', 1)[1]) for a in args
                          if a.startswith('--workdir=')]
  demos = {d for _, n, args in shared if n == 'big_distill.demo' for d in workdir(args)}
  mains = [args for _, n, args in shared if n == 'big_distill.main']
  mains += [args for group in together.values() for _, args in group]
  stages = {os.path.join(d, s) for d in demos for s in ('teacher', 'student')}
  before = {w: snapshot(w) for args in mains for w in workdir(args) if w not in stages}
  (tmp_path / 'driver').mkdir()
  driver = subprocess.Popen(
      [sys.executable, '-c', DRIVER, json.dumps([(n, a) for _, n, a in shared]),
       json.dumps(DEMO_METRICS), str(tmp_path / 'driver')], cwd=tmp_path, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(DEVICES, PYTHONPATH=ROOT))
  for where, group in together.items():
    processes = [subprocess.Popen(
        [sys.executable, '-m', c.name, *args], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=dict(env(PYTHONPATH=ROOT), XLA_FLAGS=c.xla_flags))
                 for c, args in group]
    for (command, args), process in zip(group, processes):
      out, err = process.communicate(timeout=300)
      assert process.returncode == 0, f'{where}: {shlex.join(args)}:\n{err[-3000:]}'
      assert _plan(where, out)['devices'] == int(command.flag('num_processes')) * int(
          re.search(r'device_count=(\d+)', command.xla_flags).group(1))
  _, err = driver.communicate(timeout=600)
  assert driver.returncode == 0, err[-4000:]
  with open(tmp_path / 'driver' / 'results.json') as f:
    results = json.load(f)
  for result in results:
    for stream in ('out', 'err'):
      with open(f'{result["prefix"]}.{stream}', encoding='utf-8') as f:
        result[stream] = f.read()
  own = [r for r in results if r['stage_of'] is None]
  assert [(r['name'], r['args']) for r in own] == [(n, a) for _, n, a in shared]
  for (where, name, args), result in zip(shared, own):
    assert result['code'] == 0, f'{where}: {name} {shlex.join(args)}:\n{result["err"][-3000:]}'
    if name == 'big_distill.main':
      _plan(where, result['out'])
    elif name == 'big_distill.demo':
      stages = [r for r in results if r['stage_of'] == results.index(result)]
      assert _as_running(stages) == _as_running(
          [dict(name=c.name, args=[*c.args[2:], '--dry_run']) for c in by_hand.commands])
      for stage in stages:
        assert stage['code'] == 0, f'{where}: {stage["err"][-3000:]}'
        _plan(where, stage['out'])
      assert all(f'{v:.2%}' in result['out'] for v in DEMO_METRICS.values()), result['out']
    elif name == 'python -c':
      assert os.path.isdir(tmp_path / 'DATA_DIR' / 'image_folder'), where
  assert {w: snapshot(str(w)) for w in before} == before


def _main_commands(output: str) -> list[list[str]]:
  """The arguments of each `python -m big_distill.main` a launcher prints (also inside gcloud's
  `--command=...`)."""
  found = []
  for line in output.splitlines():
    words = shlex.split(line)
    for word in list(words):
      if word.startswith('--command='):
        words += ['&&', *shlex.split(word.split('=', 1)[1])]
    for i in range(len(words) - 1):
      if words[i:i + 2] == ['-m', 'big_distill.main']:
        rest = words[i + 2:]
        found.append(rest[:rest.index('&&')] if '&&' in rest else rest)
  return found


def test_the_launchers_run_dry(blocks):
  """Every launcher command (`sbatch`'s options dropped) with DRY_RUN=1 exits 0 and prints the
  `big_distill.main` command it would run, whose flags and config (CONFIG, a placeholder, aside)
  pass the static checks."""
  ran = 0
  for block in blocks:
    for command in block.commands:
      if not command.name.startswith('launch/') or command.name in _entry(block):
        continue
      args = command.args[command.args.index(command.name) + 1:] if (
          command.name in command.args) else command.args
      proc = subprocess.run(['bash', command.name, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, DRY_RUN='1'))
      where = f'{block.where}: {command.name} {shlex.join(args)}'
      assert proc.returncode == 0, f'{where}:\n{proc.stderr}'
      [main] = _main_commands(proc.stdout)
      _check_statically(where, 'big_distill.main', tuple(a for a in main if a != '--config=CONFIG'))
      ran += 1
  assert ran == 4


def test_the_python_blocks_run_here(blocks):
  """Every Python block that runs here, with `config` a config file's (`configs/teacher.py`): the
  config it leaves builds its optimizer, which takes a step (Shampoo's, where it names it) at the
  learning rate it sets."""
  ran = 0
  for block in blocks:
    if block.language != 'python' or 'python' in _entry(block):
      continue
    config = configlib.load(TEACHER_CONFIG)
    exec(compile(block.code, block.where, 'exec'), {'config': config})  # pylint: disable=exec-used
    tx, schedule = optim.make_optimizer(config, 1000)
    params = {'kernel': jnp.ones((3, 4)), 'bias': jnp.ones(4)}
    state = tx.init(params)
    updates, _ = tx.update(params, state, params)
    assert all(bool(jnp.isfinite(u).all()) for u in jax.tree_util.tree_leaves(updates))
    assert float(jnp.max(schedule(jnp.arange(1000)))) == pytest.approx(config.lr, rel=1e-3)
    states = jax.tree_util.tree_leaves(state, is_leaf=lambda s: isinstance(
        s, shampoo.ShampooState))
    assert any(isinstance(s, shampoo.ShampooState) for s in states) == (
        config.optimizer.name == 'shampoo'), block.where
    ran += 1
  assert ran >= 1
