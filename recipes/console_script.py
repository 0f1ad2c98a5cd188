"""Runs an absl program installed as a console script the way `python -m` runs it.

absl's --help prints the docstring of `__main__` and the flags that `__main__`
defined. Under `python -m recipes.imagenet_train` that is the recipe's module;
under the `keras-lars-train` console script, `__main__` is pip's three-line
wrapper, and --help would print a bare usage line. `run` lends the wrapper the
module's docstring and flags first.
"""

import sys

from absl import app
from absl import flags


def run(module_name, main):
    """Runs `main` with absl, its --help describing the module `module_name`."""
    script = sys.modules["__main__"]
    module = sys.modules[module_name]
    if script is not module:
        script.__doc__ = module.__doc__
        for flag in flags.FLAGS.get_key_flags_for_module(module_name):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main)
