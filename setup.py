"""Build glue for the cffi extension pymemcg._pymemcg, in three settings:

- a checkout: `make bpf` (clang + bpftool skeletons, a position-independent
  libbpf.a from Debian's source package) runs first, then the extension links
  libbpf.a and the host's libelf and zlib;
- `make wheels` (packaging/wheels.mk): PYMEMCG_BUILD_DIR names a build tree
  that make filled for one architecture, with libelf and zlib built
  statically in PYMEMCG_STATIC_DEPS; nothing is built here but the extension;
- the sdist (it has PKG-INFO): the BPF objects and skeletons of x86_64 and
  aarch64 and libbpf's source are in vendor/ (put there by the sdist command
  below), so a C compiler and the libelf and zlib headers are all it needs:
  no network, no clang, no bpftool, no make. Where the extension cannot be
  compiled (no compiler, no headers, an architecture without a prebuilt BPF
  object), the install goes on without it, says so, and records why in
  pymemcg/_build_note.py: Reader(backend="auto") then reads memory.stat text
  with a warning that gives the reason, and backend="bpf" raises.
"""

import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist
from setuptools.errors import CCompilerError, ExecError, PlatformError

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "csrc"))
import build_config  # noqa: E402  (csrc/build_config.py: the build mode, where the inputs are)
import record_header  # noqa: E402  (csrc/record_header.py: bpf_src/memcg_record.h as Python)

# the sdist's vendor/ is staged by `make sdist` under build/
SDIST_VENDOR = os.path.join(HERE, "build", "sdist", "vendor")
BUILD_NOTE = os.path.join("pymemcg", "_build_note.py")


class BuildPy(build_py):
    """Writes pymemcg/_record_h.py (the record format of bpf_src/memcg_record.h,
    for the Python that needs no compiled part) into the source tree before
    the package's modules are collected, in every build: checkout, editable,
    wheel and sdist; an install without the extension needs it too."""

    def run(self):
        record_header.write_python_module(HERE)
        super().run()


class BuildExtension(build_ext):
    """Runs `make bpf` in a checkout; in an sdist, compiles what it carries and
    installs the text backend alone when the extension cannot be built."""

    def run(self):
        mode = build_config.build_mode()
        if mode == "checkout":
            subprocess.run(["make", "-C", HERE, "bpf"], check=True)
        reason = build_config.cannot_build_reason()
        if reason is None:
            try:
                super().run()
                self._write_note(None)
                return
            except (CCompilerError, ExecError, PlatformError, OSError) as e:
                if mode != "sdist":
                    raise
                reason = f"the C extension failed to compile ({e})"
        elif mode != "sdist":
            raise PlatformError(reason)
        banner = "!" * 72
        print(f"\n{banner}\npymemcg: installing WITHOUT the BPF backend: {reason}.\n"
              "Only the memory.stat text backend will work. For BPF, install a C compiler\n"
              "and the libelf and zlib headers (Debian: gcc libelf-dev zlib1g-dev) and\n"
              f"reinstall, or install a pymemcg wheel.\n{banner}\n", file=sys.stderr)
        self._write_note(reason)

    def _write_note(self, reason):
        """pymemcg/_build_note.py in the build tree: why the extension is
        missing (None when it was built), read by pymemcg.binding."""
        path = os.path.join(self.build_lib, BUILD_NOTE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write('"""Written by setup.py: why this install has no compiled part."""\n'
                    f"EXTENSION_MISSING_REASON = {reason!r}\n")

    def get_outputs(self):
        # an install without the extension must not expect its file
        return [p for p in super().get_outputs() if os.path.exists(p)]


class SdistWithVendor(sdist):
    """Adds build/sdist/vendor (prebuilt BPF objects and skeletons, libbpf's
    source) to the sdist as vendor/: `make sdist` stages it."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        if build_config.build_mode() == "sdist":  # an sdist of an sdist keeps its vendor/
            return
        if not os.path.isdir(SDIST_VENDOR):
            raise PlatformError(f"{SDIST_VENDOR} is missing: build the sdist with `make sdist`")
        shutil.copytree(SDIST_VENDOR, os.path.join(base_dir, "vendor"))


setup(
    cffi_modules=["csrc/build_ffi.py:ffibuilder"],
    cmdclass={"build_py": BuildPy, "build_ext": BuildExtension, "sdist": SdistWithVendor},
    options={
        # cffi builds the extension against the stable ABI (_pymemcg.abi3.so):
        # tag the wheel so, and one wheel serves CPython 3.9 and later
        "bdist_wheel": {"py_limited_api": "cp39"},
        # one setuptools tree per architecture's build, so that a cross
        # build never reuses the other architecture's objects
        "build": {"build_base": build_config.setuptools_build_base()},
    },
)
