"""The Bazel BUILD file names every Python module and test of the project."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
LISTED_DIRS = ("keras_lars", "recipes", "tools", "tests", "benchmarks")


def test_every_python_file_is_in_build():
    listed = set(re.findall(r'"([\w/.-]+\.py)"', (ROOT / "BUILD").read_text()))
    on_disk = {
        str(path.relative_to(ROOT))
        for directory in LISTED_DIRS
        for path in (ROOT / directory).rglob("*.py")
    }
    assert on_disk, "found no Python files"
    assert on_disk - listed == set(), "missing from BUILD"
    assert listed - on_disk == set(), "BUILD names files that do not exist"
