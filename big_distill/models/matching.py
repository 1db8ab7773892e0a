"""A weights file's arrays checked against the model's, with one message for every family: bad
input naming the first missing, misshapen or unknown key and both shapes."""

from typing import Any, Mapping

import numpy as np

from big_distill import errors


def problem(key: str, got: Any, want: tuple[int, ...]) -> str | None:
  """What is wrong with the file's array `got` (None: missing) for `key`; None if it fits."""
  if got is None:
    return f'{key}: missing from file, model expects {tuple(want)}'
  if tuple(np.shape(got)) != tuple(want):
    return f'{key}: file has {tuple(np.shape(got))}, model expects {tuple(want)}'
  return None


def check(problems: list[str], unknown: Mapping[str, Any], what: str) -> None:
  """Bad input `what: <first problem> (and N more mismatching keys)` if any of `problems` (in the
  model's order) or the file's `unknown` arrays (keys the model lacks)."""
  problems = [*problems, *(f'{key}: in file with shape {tuple(np.shape(unknown[key]))}, not in '
                           'model' for key in sorted(unknown))]
  if problems:
    more = f' (and {len(problems) - 1} more mismatching keys)' if len(problems) > 1 else ''
    raise errors.BadInput(f'{what}: {problems[0]}{more}')
