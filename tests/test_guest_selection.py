"""The tests the kernel matrix runs in each guest (vm/guest_run.py TESTS):
each names a test file, and a test in it, that exist, and the ones only a
cgroup v2 guest can run are among them."""

from __future__ import annotations

import os
import re
import sys

REPO = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(REPO, "vm"))
import guest_run  # noqa: E402  (vm/ is scripts, not a package)


def test_every_selected_test_exists():
    for entry in guest_run.TESTS:
        path, _, name = entry.partition("::")
        with open(os.path.join(REPO, path)) as f:
            source = f.read()
        if name:
            assert re.search(rf"^def {re.escape(name)}\(", source, re.M), entry


def test_the_tests_that_need_a_v2_guest_are_selected():
    # a real memory stall per cgroup: cgroup v2 only, so never on the v1 host
    for entry in ("tests/test_pressure.py",
                  "tests/test_top.py::test_pressure_column_shows_a_stall"):
        assert entry in guest_run.TESTS
