"""What every command shares: flag parsing and the error contract of `errors`.

  cli.run(main, config=_CONFIG)   # instead of absl's app.run(main)

Flags that cannot be parsed (an unknown flag or config key, a value of the wrong type, a missing
required flag, a config file that does not exist or has no `get_config`) and the project's own
errors end the command with one line `big_distill: error: ...` on stderr and the exit code of
`errors`; any other exception keeps its traceback (exit 1).
"""

import importlib.util
import os
import re
import sys
from typing import Callable

from absl import app, flags
import ml_collections

from big_distill import console, errors

ConfigFlag = flags.FlagHolder[ml_collections.ConfigDict]


def say(line: str) -> None:
  """Writes `line` to stderr on a line of its own, in one system call: background threads
  (orbax's writers) may print tracebacks piece by piece while a failed run exits, and their
  unfinished line would otherwise prefix it."""
  os.write(sys.stderr.fileno(), f'\n{line}\n'.encode())


def fail(message: str, code: int = errors.BAD_INPUT) -> None:
  """Ends the command: `big_distill: error: <message>` and exit `code`."""
  say(f'big_distill: error: {" ".join(message.split())}')
  sys.exit(code)


def run(main: Callable[[list[str]], None], *, config: ConfigFlag | None = None,
        positional: bool = False) -> None:
  """`app.run(main)` with the error contract; `config` is the command's config-file flag;
  `positional`: the command takes arguments besides its flags (`predict`'s image files)."""

  def main_with_contract(argv: list[str]) -> None:
    console.start()
    if len(argv) > 1 and not positional:
      fail(f'unexpected arguments: {" ".join(argv[1:])}')
    try:
      main(argv)
    except errors.Error as e:
      if isinstance(e, errors.Preempted):
        say(f'big_distill: {e}')
        sys.exit(e.exit_code)
      if str(e):
        fail(str(e), e.exit_code)
      sys.exit(e.exit_code)
    except OSError as e:
      fail(f'{e}', errors.IO_ERROR)

  app.run(main_with_contract, flags_parser=lambda argv: _parse_flags(argv, config))


def _parse_flags(argv: list[str], config: ConfigFlag | None) -> list[str]:
  """absl's flag parsing, with every failure as one `big_distill: error:` line and exit 2."""
  config_arg = next((a.split('=', 1)[1] for a in argv[1:]
                     if config is not None and a.startswith(f'--{config.name}=')), None)
  config_path = config_arg.split(':', 1)[0] if config_arg else None
  try:
    if config_path and not os.path.exists(config_path):
      raise errors.BadInput(f'config file {config_path} does not exist.')
    rest = flags.FLAGS(argv)
    if config is not None:
      config.value  # Loads the config file now, if the flag has not yet.
    return rest
  except flags.UnrecognizedFlagError as e:
    message = _unknown_flag(e, config)
  except IndexError:  # ml_collections: an override of a list entry that does not exist.
    message = _missing_list_entry(argv, config_arg)
  except AttributeError as e:  # An override of a key the config does not have.
    message = (f'{config_path} has no get_config(arg) function.' if 'get_config' in str(e)
               else _unknown_key(e, argv))
  except (flags.Error, ValueError, OSError, TypeError) as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    message = ' '.join(lines[-1:] if len(lines) > 1 and 'Traceback' in str(e) else lines)
    if 'get_config' in message:
      message = f'{config_path} has no get_config(arg) function.'
    message = message.split('Pass --helpshort')[0].strip()
  fail(message)


def _load_config(config_arg: str) -> ml_collections.ConfigDict | None:
  """`get_config(arg)` of a `--config=FILE[:arg]` value (the flag's own value is unset when one
  of its overrides failed), None if that fails too."""
  path, _, arg = config_arg.partition(':')
  try:
    spec = importlib.util.spec_from_file_location('config_file', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)
  except Exception:  # pylint: disable=broad-except  # Only for a better message.
    return None


def _unknown_flag(error: flags.UnrecognizedFlagError, config: ConfigFlag | None) -> str:
  name = error.flagname
  if config is not None and name.startswith(f'{config.name}.'):
    return (f"unknown config key '{name[len(config.name) + 1:]}' in --{name}; the config file "
            'and configlib.base_config() list the keys.')
  hint = str(error).split('. Did you mean', 1)
  return f'unknown flag --{name}' + (f'. Did you mean{hint[1]}' if len(hint) > 1 else
                                     '; see --helpfull.')


def _unknown_key(error: AttributeError, argv: list[str]) -> str:
  inner = error.args[0] if error.args else error  # ml_collections wraps a KeyError('key\nhint').
  key, *hint = str(inner.args[0] if isinstance(inner, KeyError) else inner).splitlines()
  key = key.strip('\'"')
  arg = next((a for a in argv if a.startswith('--config.') and f'.{key}' in a.split('=', 1)[0]),
             f'--config...{key}')
  return (f"unknown config key '{arg.split('=', 1)[0][len('--config.'):]}' in {arg}. "
          f'{" ".join(hint) or "The config file and configlib.base_config() list the keys."}')


def _missing_list_entry(argv: list[str], config_arg: str | None) -> str:
  """The override of `config.<list>[i]` past the list's end, and how to add an entry."""
  config = _load_config(config_arg) if config_arg else None
  for arg in argv:
    match = re.match(r'--config\.([\w.]+)\[(\d+)\]', arg)
    if not match or config is None:
      continue
    name, index = match.group(1), int(match.group(2))
    try:
      entries = len(config[name])
    except (KeyError, AttributeError, TypeError):
      continue
    if index >= entries:
      how = (' List the teachers in the config argument, their checkpoints joined by "+" '
             '(--config=FILE:teacher=A.npz+B.npz), then set --config.teachers[1].* as needed.'
             if name == 'teachers' else '')
      return (f'{arg.split("=", 1)[0]}: config.{name} has {entries} '
              f'entr{"y" if entries == 1 else "ies"}, so [{index}] does not exist.{how}')
  return 'an override names a list entry that the config does not have.'
