"""Build glue: `make bpf` (clang + bpftool skeleton, and a position-independent
libbpf.a) runs before the cffi extension is compiled, so that `pip install .`
builds everything, from a checkout or from the sdist."""

import os
import subprocess

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithBpf(build_ext):
    def run(self):
        subprocess.run(["make", "-C", HERE, "bpf"], check=True)
        super().run()


setup(
    cffi_modules=["csrc/build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildWithBpf},
    # cffi builds the extension against the stable ABI (_pymemcg.abi3.so):
    # tag the wheel so, and one wheel serves CPython 3.9 and later
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
