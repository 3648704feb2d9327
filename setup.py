"""Build glue: `make bpf` (clang + bpftool skeleton) runs before the cffi
extension is compiled, so that `pip install .` builds everything."""

import subprocess

from setuptools import setup
from setuptools.command.build_ext import build_ext


class BuildWithBpf(build_ext):
    def run(self):
        subprocess.run(["make", "bpf"], check=True)
        super().run()


setup(
    cffi_modules=["csrc/build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildWithBpf},
)
