"""Argument checks shared by the optimizer and the schedule.

Each raises `ValueError` naming the argument. A name that starts with `--` is
a command-line flag and is shown as given (`--learning_rate must be ...`);
any other is an argument, shown in backticks (`` `momentum` must be ...``).
"""

import math
import numbers


def check_number(name, value, low, high=None, low_inclusive=True):
    """Raises `ValueError` naming `name` unless `value` is a real number with
    `low <= value` (`low < value` when not `low_inclusive`) and, given `high`,
    `value < high`. NaN and infinities never pass."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{_shown(name)} must be a number. Received: {name}={value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{_shown(name)} must be a finite number. Received: {name}={value}")
    above_low = value >= low if low_inclusive else value > low
    below_high = high is None or value < high
    if not (above_low and below_high):
        if high is not None:
            interval = f"in {'[' if low_inclusive else '('}{low}, {high})"
        else:
            interval = f">= {low}" if low_inclusive else f"> {low}"
        raise ValueError(f"{_shown(name)} must be {interval}. Received: {name}={value}")


def check_integer(name, value, low):
    """Raises `ValueError` naming `name` unless `value` is an int >= `low`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{_shown(name)} must be an integer >= {low}. Received: {name}={value!r}")


def check_bool(name, value):
    """Raises `ValueError` naming `name` unless `value` is True or False (a
    string such as "False" would otherwise read as True)."""
    if not isinstance(value, bool):
        raise ValueError(f"{_shown(name)} must be True or False. Received: {name}={value!r}")


def check_choice(name, value, choices):
    """Raises `ValueError` naming `name` unless `value` is one of `choices`."""
    if value not in choices:
        listed = ", ".join(map(str, choices))
        raise ValueError(f"{_shown(name)} must be one of {listed}. Received: {name}={value!r}")


def _shown(name):
    return name if name.startswith("--") else f"`{name}`"
