"""What every command shares: flags, config files, and the error contract of `errors`.

  def main(argv, config):  # `config`: the command's `--config=FILE[:ARG]` with its overrides.
    ...

  if __name__ == '__main__':
    define_flags()                     # The command's absl flags, defined only when it runs.
    cli.run(main, config=True)         # Instead of absl's app.run(main).

absl parses the flags; `configlib` reads the config file and applies its `--config.KEY=VALUE`
overrides. A failure of either (an unknown flag, a value of the wrong type, a missing required
flag, a config file that does not exist, does not run (its line) or has no `get_config`, an
override of a key or list entry the config lacks) and the project's own errors end the command
with one line `big_distill: error: ...` on stderr and the exit code of `errors.exit_code`; any
other exception keeps its traceback (exit 1). Messages come from the exception types and their
public fields, never from matching a library's text.

This module imports nothing heavy, and the commands import JAX and TensorFlow only when they run
(their `main`): `--help` and a misspelt flag answer at once, and `announce` says what a command is
doing before it loads them.
"""

import difflib
import importlib.metadata
import os
import sys
from typing import Callable

from absl import app, flags

from big_distill import console, errors

CONFIG = 'config'
_OVERRIDE = f'--{CONFIG}.'
# XLA flags set for every command's CPU compilations, on the jaxlib versions they were measured on
# (docs/performance.md, "Compile time"): XLA:CPU's loop emitters compile a step in 30-40% less
# time than its newer fusion emitters, and the step runs as fast. They change nothing on a GPU or
# TPU; a flag that XLA_FLAGS already names is left as it is.
CPU_XLA_FLAGS = ('--xla_cpu_use_fusion_emitters=false',)
CPU_XLA_FLAGS_JAXLIB = '0.10.'


def set_cpu_xla_flags() -> None:
  """Adds `CPU_XLA_FLAGS` to the environment's XLA_FLAGS (before JAX starts its backends)."""
  try:
    if not importlib.metadata.version('jaxlib').startswith(CPU_XLA_FLAGS_JAXLIB):
      return
  except importlib.metadata.PackageNotFoundError:
    return
  current = os.environ.get('XLA_FLAGS', '')
  added = [f for f in CPU_XLA_FLAGS if f.partition('=')[0] not in current]
  if added:
    os.environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()


def say(line: str) -> None:
  """Writes `line` to stderr on a line of its own, in one system call: background threads
  (orbax's writers) may print tracebacks piece by piece while a failed run exits, and their
  unfinished line would otherwise prefix it."""
  os.write(sys.stderr.fileno(), f'\n{line}\n'.encode())


def fail(message: str, code: int = errors.BAD_INPUT) -> None:
  """Ends the command: `big_distill: error: <message>` and exit `code`."""
  say(f'big_distill: error: {" ".join(message.split())}')
  sys.exit(code)


def run(main: Callable[..., None], *, config: bool | str = False, positional: bool = False,
        announce: Callable[[], str] | None = None) -> None:
  """`app.run(main)` with the error contract. `config`: the command takes `--config=FILE[:ARG]`
  (a string: its default) and `--config.KEY=VALUE` overrides, and `main(argv, config)` gets the
  resulting ConfigDict; `positional`: it takes arguments besides its flags (`predict`'s image
  files); `announce`: the line (from the parsed flags) that says what it does, printed on a
  terminal as it starts."""
  argv, overrides = _split_overrides(sys.argv)
  if config:
    flags.DEFINE_string(CONFIG, config if isinstance(config, str) else None,
                        'The config file, FILE[:ARG] (ARG: the file\'s arguments); then '
                        f'{_OVERRIDE}KEY=VALUE sets any of its keys.',
                        required=not isinstance(config, str))
  elif overrides:
    argv = [argv[0], *overrides, *argv[1:]]  # absl refuses them: not a flag of this command.

  def main_with_contract(args: list[str]) -> None:
    console.start()
    set_cpu_xla_flags()
    if len(args) > 1 and not positional:
      fail(f'unexpected arguments: {" ".join(args[1:])}')
    try:
      if announce and sys.stderr.isatty():  # A person waits; a log has absl's lines.
        say(announce())
      if config:
        from big_distill import configlib  # pylint: disable=g-import-not-at-top  # Loads JAX.
        path, _, arg = flags.FLAGS[CONFIG].value.partition(':')
        main(args, configlib.override(configlib.load(path, arg or None), overrides))
      else:
        main(args)
    except errors.Error as e:
      if isinstance(e, errors.Preempted):
        say(f'big_distill: {e}')
        sys.exit(e.exit_code)
      if str(e):
        fail(str(e), e.exit_code)
      sys.exit(e.exit_code)
    except OSError as e:
      fail(f'{e}', errors.exit_code(e))

  try:
    app.run(main_with_contract, argv=argv, flags_parser=_parse_flags)
  except KeyboardInterrupt:  # A training run saves first (`errors.Interrupted`); others stop.
    say('big_distill: interrupted (Ctrl-C).')
    sys.exit(errors.INTERRUPTED)


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """(argv without the config overrides, the overrides as `--config.KEY=VALUE`); an override's
  value may also be the next argument (`--config.KEY VALUE`)."""
  rest, overrides, args = [], [], iter(argv)
  for arg in args:
    if not arg.startswith(_OVERRIDE):
      rest.append(arg)
    elif '=' in arg:
      overrides.append(arg)
    else:
      overrides.append(f'{arg}={next(args, "")}')
  return rest, overrides


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every failure as one `big_distill: error:` line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.UnrecognizedFlagError as e:
    name = e.flagname
    if name.startswith(f'{CONFIG}.'):
      fail(f'--{name}: this command takes no config file.')
    close = difflib.get_close_matches(name, list(flags.FLAGS), n=1)
    fail(f'unknown flag --{name}' + (f'; did you mean --{close[0]}?' if close else
                                     '; see --helpfull.'))
  except flags.Error as e:  # A value of the wrong type, a missing required flag.
    fail(str(e))
