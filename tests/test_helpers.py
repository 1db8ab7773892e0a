"""The tests' command runner (`helpers.run`), relied on by every end-to-end test."""

import collections
import concurrent.futures
import sys

from tests.helpers import run


def test_commands_run_from_threads_report_their_own_exit_codes():
  """`run` from several threads at once (as `test_reliability` runs its bad inputs): each command's
  exit code is its own. multiprocessing's forkserver hands a process's code to whichever thread
  polls first, and left the other one 255 about once in 150 runs."""
  cmd = [sys.executable, '-m', 'json.tool', '/no/such/file.json']  # argparse: exit 2.
  first = run(cmd, check=False)
  assert first.returncode == 2 and 'No such file' in first.stderr
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    codes = collections.Counter(pool.map(lambda _: run(cmd, check=False).returncode, range(300)))
  assert codes == {2: 300}
