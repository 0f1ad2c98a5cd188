"""keras_lars: the LARS optimizer and its warm-up schedule for Keras 3."""

from keras_lars.lars import DEFAULT_EXCLUDE_PATTERNS
from keras_lars.lars import LARS
from keras_lars.schedules import PolynomialWarmup

__version__ = "0.1.0"

__all__ = ["DEFAULT_EXCLUDE_PATTERNS", "LARS", "PolynomialWarmup"]
