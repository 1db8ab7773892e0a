r"""The paper's comparison at small scale: teaching setups x schedule lengths on Fashion-MNIST.

  python -m big_distill.reproduce --workdir=/tmp/fmnist_repro [--teacher=DIR] [--epochs=1,3,9]
      [--variants=fixed,...] [--seeds=0,1] [--train_examples=N] [--optimizer=adam|shampoo]
      [--baseline] [--views=K [--top_k=k]] [--override=KEY=VALUE ...]

Trains the demo teacher (`configs/teacher.py`, on the whole train split) unless `--teacher`
names a finished run, then, for each seed, schedule length and variant, distils it with
`configs/distill.py` into the demo student. A fixed teacher's logits are computed once and
shared; with `--views=K` the other variants' teachers are paid once too, per variant and seed:
their students, every length, replay one reinforcement (`big_distill.reinforce`), and the report
says what the teacher cost and how often it was reused. `--baseline` also trains that student
from scratch on labels (the teacher config with the student's architecture) for each length and
seed: the supervised baseline. Students see `--augment`; `--optimizer=shampoo` trains them with
Shampoo (its defaults: Adam grafting, at Adam's learning rate); `--override` sets a config key of
every student run.

The small-data regime, `--train_examples=N`: the students (baseline included) train on
`train[:N]`, the first N examples of the train split in TFDS's order, the same images for every
run and invocation; the teacher still learns from the whole split. A run's warm-up is then at
most a tenth of its steps, and the run also evaluates on its N training examples
(`config.evals`: `train_eval/*`, for the report's fit to the teacher).
Every student run evaluates about `runs.EVALS_PER_RUN` times (at least `runs.MIN_EVAL_INTERVAL`
steps apart) and saves a checkpoint at every eval and every 500 steps.

Runs live in `WORKDIR/<variant>_<E>ep[_n<N>][_<optimizer>][_k<K>]_s<seed>` (`supervised_...` for
the baseline), reinforcements in `WORKDIR/reinforcement_<variant>_k<K>[...]_s<seed>`. A finished run (the checkpoint of its last step saved) is not started again; delete
its directory to redo it. An unfinished one resumes from its newest checkpoint, so the command
can be stopped and run again. After each run, `big_distill.report` rebuilds `results.md` and the
plots in WORKDIR from every finished run there, those of earlier invocations included (e.g.
other `--epochs`).
"""

import os

from absl import flags

from big_distill import cli, variants
from big_distill.runs import CONFIGS, MAIN, Stage, finished, plan, run_command, run_stage
from big_distill.workdir import CONFIG

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('workdir', '/tmp/fmnist_repro', 'Where every run lives.')
  flags.DEFINE_string('teacher', None, 'A finished teacher run (default: train one).')
  flags.DEFINE_list('epochs', ['1', '3', '9'], 'Schedule lengths in epochs.')
  flags.DEFINE_list('variants', list(variants.NAMES), 'Teaching setups to compare.')
  flags.DEFINE_string('augment', 'inception_crop', 'The students\' augmentation.')
  flags.DEFINE_list('seeds', ['0'], 'config.seed of the runs: one run per seed.')
  flags.DEFINE_integer('train_examples', None, 'Train the students on the first N examples of '
                       'the train split (default: all of it).')
  flags.DEFINE_enum('optimizer', 'adam', ['adam', 'shampoo'], 'The students\' optimizer.')
  flags.DEFINE_bool('baseline', False, 'Also train the student from scratch on labels '
                    '(supervised).')
  flags.DEFINE_integer('views', None, 'Pay the teacher once: the students of function '
                       'matching, consistent and independent replay one reinforcement of K views '
                       'per variant and seed (`big_distill.reinforce`), made before them and '
                       'shared by every length.')
  flags.DEFINE_integer('top_k', None, 'With --views: store the top k classes (and the rest).')
  flags.DEFINE_multi_string('override', [], 'KEY=VALUE: --config.KEY=VALUE for every student run '
                            '(repeatable), e.g. input.batch_size=256.')


def _report(root: str, teacher: str) -> None:
  """`big_distill.report` of every finished run in `root` but the teacher, into `root`."""
  done = sorted(p for p in (os.path.join(root, d) for d in os.listdir(root))
                if p != teacher and finished(p) and os.path.exists(os.path.join(p, CONFIG)))
  if done:
    run_command('report', 'big_distill.report', f'--workdirs={",".join(done)}',
                f'--output={root}')


def main(argv):
  del argv
  root = os.path.abspath(FLAGS.workdir)
  teacher = os.path.abspath(FLAGS.teacher or os.path.join(root, 'teacher'))
  students = plan(root, teacher, epochs=FLAGS.epochs, variant_names=FLAGS.variants,
                  seeds=FLAGS.seeds, train_examples=FLAGS.train_examples,
                  optimizer=FLAGS.optimizer, baseline=FLAGS.baseline, augment=FLAGS.augment,
                  overrides=FLAGS.override, views=FLAGS.views, top_k=FLAGS.top_k)
  stages = list(enumerate(students, 1))
  if not FLAGS.teacher:
    stages.insert(0, (0, Stage('teacher', f'{CONFIGS}/teacher.py', teacher)))
  ran = False
  for i, stage in stages:
    name = f'{i}/{len(students)} {stage.label}'
    if finished(stage.workdir):
      print(f'[{name}] finished: {stage.workdir}', flush=True)
      continue
    seconds = run_stage(name, stage.config, stage.workdir, *stage.overrides, module=stage.module)
    print(f'[{name}] done in {seconds:.0f} s: {stage.workdir}', flush=True)
    if i and stage.module == MAIN:
      _report(root, teacher)  # What has finished so far, should the command be stopped.
      ran = True
  if not ran:
    _report(root, teacher)


if __name__ == '__main__':
  define_flags()
  cli.run(main, announce=lambda: f'big_distill.reproduce: planning the runs in {FLAGS.workdir}.')
