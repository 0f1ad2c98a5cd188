"""The `main` of the project's py_binary targets: runs the module named by the
first argument as `python -m` does.

Bazel's py_binary runs its main file as a script, where the relative imports
of recipes/ and tools/ cannot resolve (they are relative because those
packages ship under other names, setup.py). Each binary passes its module in
`args`: `bazel run //:imagenet_train -- --help`.
"""

import runpy
import sys

if __name__ == "__main__":
    module = sys.argv.pop(1)
    runpy.run_module(module, run_name="__main__", alter_sys=True)
