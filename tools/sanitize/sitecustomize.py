"""`make test-sanitize` puts this directory on PYTHONPATH, so every Python
process of its run (pytest and the commands the tests start) imports
pymemcg._pymemcg from PYMEMCG_SANITIZED_EXTENSION, the C shim built with
AddressSanitizer and UndefinedBehaviorSanitizer, instead of the checkout's
own build. The sanitizer runtime must be loaded first (LD_PRELOAD): an
extension built with it does not load otherwise.

Each sanitizer writes its reports under PYMEMCG_SANITIZER_REPORTS (one file
per process), where make looks for them after the run: a report from a
command a test started counts even if that test passed. Set here because
gcc's UBSan runtime, beside ASan's, takes no log_path from the environment.
"""

import ctypes
import ctypes.util
import importlib.util
import os
import sys

SANITIZED = os.environ.get("PYMEMCG_SANITIZED_EXTENSION", "")
REPORTS = os.environ.get("PYMEMCG_SANITIZER_REPORTS", "")


class SanitizedExtension:
    """A meta path finder that answers for pymemcg._pymemcg alone."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname != "pymemcg._pymemcg":
            return None
        return importlib.util.spec_from_file_location(fullname, SANITIZED)


if SANITIZED:
    if not os.path.isfile(SANITIZED):
        sys.exit(f"PYMEMCG_SANITIZED_EXTENSION={SANITIZED}: no such file (make test-sanitize "
                 f"builds it)")
    if REPORTS:
        for runtime in ("asan", "ubsan"):
            # each runtime keeps its own report path: set it in the library itself
            lib = ctypes.CDLL(ctypes.util.find_library(runtime) or f"lib{runtime}.so")
            lib.__sanitizer_set_report_path(os.path.join(REPORTS, runtime).encode())
    sys.meta_path.insert(0, SanitizedExtension)
