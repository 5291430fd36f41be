"""CPU-sized noise-conditional classifier p_t(y | x(t)) on the digits under `digits_ve`'s VE SDE,
for classifier guidance (`scoresde sample --classifier <workdir>`)."""

from scoresde.configs._digits_classifier import as_classifier
from scoresde.configs.digits_ve import get_config as get_digits_ve


def get_config():
  return as_classifier(get_digits_ve())
