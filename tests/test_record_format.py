"""bpf_src/memcg_record.h is the record format's one source.

Python takes the format from the header at build time (csrc/record_header.py):
the binding's cdef, which the compiler checks against the header, and
pymemcg/_record_h.py, which the pure-Python side (decode.py, the text
backend) reads with no compiled part. These tests change the header and see
the change arrive in both without a hand edit, see the compiler refuse a cdef
that is not the header's, and read a text Record with the compiled part made
unimportable. No kernel, no BPF (a C compiler for the cdef check).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import types

import pytest

from pymemcg import _record_h, decode, record_format

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "csrc"))
import record_header  # noqa: E402  (csrc/record_header.py)

with open(record_header.HEADER) as _f:
    HEADER_TEXT = _f.read()
FLAGS_LINE = "\tunsigned int flags;\t\t/* PMC_REC_* */\n"


def with_extra_field(text: str) -> str:
    """The header with a u64 `extra` after pmc_record.flags and a new #define."""
    assert text.count(FLAGS_LINE) == 1
    text = text.replace(FLAGS_LINE, FLAGS_LINE + "\tunsigned long long extra;\n")
    return text.replace("#define PMC_NAME_MAX", "#define PMC_EXTRA_LIMIT\t(1U << 5)\n"
                        "#define PMC_NAME_MAX")


def load_module(text: str) -> types.ModuleType:
    """python_module() of a header's text, as a module."""
    module = types.ModuleType("generated_record_h")
    exec(compile(record_header.python_module(record_header.parse(text)), "<generated>", "exec"),
         module.__dict__)
    return module


def test_the_installed_module_is_the_headers():
    """pymemcg/_record_h.py is what the generator makes of today's header
    (a build that changed the header without regenerating it fails here)."""
    with open(_record_h.__file__) as f:
        assert f.read() == record_header.python_module(record_header.parse(HEADER_TEXT))


def test_a_field_added_to_the_header_reaches_python_and_the_cdef():
    before, after = load_module(HEADER_TEXT), load_module(with_extra_field(HEADER_TEXT))
    assert after.EXTRA_LIMIT == 32 and after.DEFINES["PMC_EXTRA_LIMIT"] == 32
    assert not hasattr(before, "EXTRA_LIMIT")
    fields = {f[0]: f for f in after.STRUCTS["pmc_record"][1]}
    assert fields["extra"][3] == 32 and fields["valid"][3] == 40
    assert after.STRUCTS["pmc_record"][0] == before.STRUCTS["pmc_record"][0] + 8
    fmt = record_format.struct_format("pmc_record", structs=after.STRUCTS)
    assert fmt == record_format.HEADER.format.replace("II", "IIQ")
    positions = record_format.tuple_positions("pmc_record", structs=after.STRUCTS)
    assert positions["valid"] == record_format.VALID_AT + 1
    cdef = record_header.cdef(record_header.parse(with_extra_field(HEADER_TEXT)))
    assert "    unsigned long long extra;\n" in cdef and "#define PMC_EXTRA_LIMIT ...\n" in cdef


def test_the_compiler_refuses_a_cdef_that_is_not_the_headers(tmp_path):
    """cffi's API mode checks the generated cdef against the header it
    compiles with: a cdef of the header before the field was added fails."""
    cffi = pytest.importorskip("cffi")
    (tmp_path / "memcg_record.h").write_text(with_extra_field(HEADER_TEXT))
    for name, text in (("_rec_same", with_extra_field(HEADER_TEXT)), ("_rec_stale", HEADER_TEXT)):
        ffi = cffi.FFI()
        ffi.cdef(record_header.cdef(record_header.parse(text)))
        ffi.set_source(name, '#include "memcg_record.h"', include_dirs=[str(tmp_path)])
        ffi.compile(tmpdir=str(tmp_path))
    sys.path.insert(0, str(tmp_path))
    try:
        import _rec_same
        import _rec_stale
    finally:
        sys.path.remove(str(tmp_path))
    assert _rec_same.ffi.offsetof("struct pmc_record", "extra") == 32
    with pytest.raises(_rec_stale.ffi.error, match="wrong offset for field 'valid'"):
        _rec_stale.ffi.sizeof("struct pmc_record")


def test_the_header_takes_only_what_the_reader_reads():
    with pytest.raises(ValueError, match="cannot read the member"):
        record_header.parse(HEADER_TEXT.replace(FLAGS_LINE, "\tunsigned short flags;\n"))
    with pytest.raises(ValueError, match="integer constant expression"):
        record_header.parse("#define PMC_X sizeof(int)\n")
    with pytest.raises(ValueError, match="define twice"):
        record_header.parse("#define PMC_KIND_NONE 7\n" + HEADER_TEXT)


def test_the_compiled_part_is_checked_against_the_python_format():
    """binding.load() refuses a compiled part built from another header."""
    from pymemcg.binding import load
    ffi, lib = load()
    assert record_format.check_compiled(ffi, lib) is None
    other = types.SimpleNamespace(**{n: getattr(lib, n) for n in _record_h.DEFINES})
    other.PMC_FORMAT_VERSION += 1
    assert "PMC_FORMAT_VERSION" in (record_format.check_compiled(ffi, other) or "")


def test_decode_imports_nothing_of_the_bpf_side():
    """decode.py imports neither wire.py nor the binding nor the extension,
    not even inside a function."""
    with open(decode.__file__) as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
            imported.update("." * node.level + a.name for a in node.names if not node.module)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert imported & {".wire", ".binding", "._pymemcg", "cffi", "pymemcg.wire"} == set()
    assert "._record_h" in imported and ".record_format" in imported


BLOCKED = ("pymemcg._pymemcg", "pymemcg.binding", "_cffi_backend", "cffi")


def test_decode_and_the_text_backend_need_no_compiled_part():
    """With the binding, the extension and cffi unimportable, a text Reader
    reads a Record and decode gives the record's shape."""
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {BLOCKED!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name in BLOCKED or name.startswith("cffi."):
                    raise ImportError(f"{{name}} is blocked")
                return None
        sys.meta_path.insert(0, Block())
        import pymemcg
        from pymemcg import decode
        from pymemcg.cgroupfs import own_memory_cgroup
        with pymemcg.Reader(stats=["usage", "anon"], backend="text") as reader:
            record = reader.read(own_memory_cgroup())
        assert record["anon"] >= 0 and record.has_memcg and record.level >= 0, record
        selection = decode.Selection(["usage", "anon"])
        assert selection.record_size - decode.Selection([]).record_size == 2 * 8
        assert isinstance(decode.PackedRecords.supported(selection), bool)
        loaded = sorted(m for m in BLOCKED if m in sys.modules)
        assert not loaded, loaded
        print("read", record.id)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("read ")
