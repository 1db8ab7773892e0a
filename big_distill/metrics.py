"""Metric writers: clu's default writers (logging + TensorBoard) plus `metrics.jsonl`."""

import json
from typing import Any, Mapping

from etils import epath
import jax
from clu import metric_writers

from big_distill import workdir as workdir_lib


class JsonlWriter(metric_writers.MetricWriter):
  """Appends one JSON object per `write_scalars` call: `{"step": s, key: value, ...}`.

  Only scalars are recorded; images, texts and the like go to the other writers.
  """

  def __init__(self, path: epath.Path):
    self._file = path.open('a')  # UTF-8; local or remote (gs://).

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """Process 0 writes TensorBoard events and `metrics.jsonl`; the others only log."""
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(just_logging=True)
  return metric_writers.MultiWriter([
      metric_writers.create_default_writer(workdir, asynchronous=False),
      JsonlWriter(workdir_lib.path(workdir) / workdir_lib.METRICS),
  ])
