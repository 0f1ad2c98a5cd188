"""Prints how long each test target of the last `bazel test` took, slowest
first, with the slowest tests inside it (pytest's --durations, which
tests/pytest_main.py turns on), and the total: where the next cut of the
suite's time should go.

    python bazel/test_times.py [bazel-testlogs]
"""

import pathlib
import re
import sys
import xml.etree.ElementTree as ElementTree

SLOWEST_SHOWN = 3  # tests listed under each target
# pytest's --durations lines: "12.34s call     tests/test_x.py::test_y[param]"
DURATION = re.compile(r"^([\d.]+)s (setup|call|teardown)\s+\S+::(\S+)")


def target_times(testlogs):
    """[(seconds, target, status)] of every target with a test.xml."""
    times = []
    for xml in sorted(testlogs.glob("**/test.xml")):
        case = ElementTree.parse(xml).getroot().find(".//testcase")
        if case is None:
            continue
        failed = case.find("failure") is not None or case.find("error") is not None
        name = str(xml.parent.relative_to(testlogs))
        times.append((float(case.get("time", 0)), name, "FAILED" if failed else "passed"))
    return sorted(times, reverse=True)


def slowest_tests(log):
    """[(seconds, test)] of the slowest phases pytest reported in `log`."""
    if not log.exists():
        return []
    found = [
        (float(match[1]), f"{match[3]} ({match[2]})")
        for match in map(DURATION.match, log.read_text(errors="replace").splitlines())
        if match
    ]
    return sorted(found, reverse=True)[:SLOWEST_SHOWN]


def main(argv):
    testlogs = pathlib.Path(argv[1] if len(argv) > 1 else "bazel-testlogs")
    times = target_times(testlogs)
    if not times:
        print(f"No test results under {testlogs}")
        return
    minutes = sum(seconds for seconds, _, _ in times) / 60
    print(f"\nTest targets by time ({len(times)}; {minutes:.1f} target-minutes):")
    for seconds, name, status in times:
        print(f"{seconds:7.0f} s  {name}{'' if status == 'passed' else '  ' + status}")
        for test_seconds, test in slowest_tests(testlogs / name / "test.log"):
            print(f"{'':12}{test_seconds:6.1f} s  {test}")


if __name__ == "__main__":
    main(sys.argv)
