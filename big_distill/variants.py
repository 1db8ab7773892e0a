"""The paper's four ways of teaching, as one table read by the steps, the input pipeline, the
configs and the report.

A variant says what the frozen teacher sees (`teacher_view`, produced by the input pipeline),
whether the step mixes the batch up before both models see it (`mixup`), and whether the
teacher's logits are a function of the example alone, so that they can be computed once and looked
up by the example's index (`cacheable`).
"""

import dataclasses

from big_distill import errors

# What the input pipeline puts next to the student's augmented `image` for the teacher:
SAME = 'same'  # nothing: the teacher sees the student's image;
AUGMENTED = 'augmented'  # `teacher_image`: its own random augmentation of the example;
UNAUGMENTED = 'unaugmented'  # `teacher_image`: the eval preprocessing of the example;
INDEX = 'index'  # `index`: the example's position in the split, to look up cached logits.
VIEWS = (SAME, AUGMENTED, UNAUGMENTED, INDEX)


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  teacher_view: str
  mixup: bool
  cacheable: bool
  description: str


VARIANTS = {v.name: v for v in (
    Variant('fixed', UNAUGMENTED, mixup=False, cacheable=True,
            description='the teacher sees the un-augmented image (or its precomputed logits), '
                        'the student a random augmentation'),
    Variant('independent', AUGMENTED, mixup=False, cacheable=False,
            description='teacher and student see independent random augmentations'),
    Variant('consistent', SAME, mixup=False, cacheable=False,
            description='teacher and student see the same random augmentation'),
    Variant('funmatch', SAME, mixup=True, cacheable=False,
            description='function matching: the same augmentation, mixed up'),
)}
NAMES = tuple(VARIANTS)  # The paper's order: from the worst teaching to the best.


def get(name: str) -> Variant:
  if name not in VARIANTS:
    raise errors.BadInput(f'config.variant={name!r}; use one of {", ".join(NAMES)}.')
  return VARIANTS[name]
