"""CPU-sized noise-conditional classifier p_t(y | x(t)) on the digits under `digits_vp`'s VP SDE,
for classifier guidance (`scoresde sample --classifier <workdir>`)."""

from scoresde.configs._digits_classifier import as_classifier
from scoresde.configs.digits_vp import get_config as get_digits_vp


def get_config():
  return as_classifier(get_digits_vp())
