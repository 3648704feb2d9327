"""bpf_src/memcg_record.h, read at build time: the record format's one source.

The header is what the BPF programs and the C shim compile against. From it
this module makes
- the record format's part of the cffi cdef (cdef()): its #defines, enums
  and structs, which cffi's API mode then checks against the compiler, and
- pymemcg/_record_h.py (python_module()): the same constants, enums and
  struct layouts as plain Python, so that the pure-Python side (decode.py,
  the text backend) needs no compiled part to know the record's shape.

It reads only what the header uses: object-like integer #defines, enums of
plain enumerators (optionally `= constant`), and structs of unsigned int,
unsigned long long and other structs of the header, with array lengths that
are constant expressions of the #defines. Anything else in a struct or enum
raises ValueError, so the header cannot grow something this reads wrongly.
Layouts are those of LP64 Linux (x86_64, aarch64): natural alignment.
"""

from __future__ import annotations

import ast
import operator
import os
import re
import sys
from typing import Callable, Dict, List, NamedTuple, Tuple

HEADER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "bpf_src", "memcg_record.h")
#: where setup.py writes python_module(), relative to the project root
PYTHON_MODULE = os.path.join("pymemcg", "_record_h.py")
#: the prefix every name of the header carries, dropped in the Python module
PREFIX = "PMC_"
#: (size, alignment) of the scalar types a struct of the header may hold
SCALARS = {"unsigned int": (4, 4), "unsigned long long": (8, 8)}


class Field(NamedTuple):
    name: str
    ctype: str      # "unsigned int", "unsigned long long", "struct NAME"
    count: int      # array length; 1 for a scalar
    is_array: bool
    offset: int     # bytes from the struct's start
    size: int       # bytes of one element


class Struct(NamedTuple):
    name: str
    size: int
    align: int
    fields: Tuple[Field, ...]


class Header(NamedTuple):
    defines: Dict[str, int]                 # C name -> value, in header order
    enums: Dict[str, Dict[str, int]]        # enum name -> {C name: value}
    structs: Dict[str, Struct]              # struct name -> layout, in header order


_BINOPS: Dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv, ast.LShift: operator.lshift, ast.RShift: operator.rshift,
    ast.BitOr: operator.or_, ast.BitAnd: operator.and_,
}


def _evaluate(expr: str, known: Dict[str, int]) -> int:
    """An integer constant expression of C (literals with U/L suffixes, the
    operators + - * / << >> | &, parentheses, names of earlier #defines);
    ValueError for anything else."""
    text = re.sub(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b", r"\1", expr).replace("/", "//")

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in known:
            return known[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not an integer constant expression of the header: {expr!r}")

    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an integer constant expression of the header: {expr!r}") from None
    return value(tree.body)


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return text.replace("\\\n", " ")


def parse(text: str) -> Header:
    """The #defines, enums and structs of the header's text."""
    text = _strip_comments(text)
    defines: Dict[str, int] = {}
    for m in re.finditer(r"^[ \t]*#[ \t]*define[ \t]+(\w+)(\(?)[ \t]*([^\n]*)$", text, flags=re.M):
        name, function_like, body = m.group(1), m.group(2), m.group(3).strip()
        if function_like or not body:   # a macro, or the include guard
            continue
        defines[name] = _evaluate(body, defines)
    body = re.sub(r"^[ \t]*#[^\n]*$", "", text, flags=re.M)
    enums: Dict[str, Dict[str, int]] = {}
    for m in re.finditer(r"\benum\s+(\w+)\s*\{(.*?)\}\s*;", body, flags=re.S):
        items: Dict[str, int] = {}
        following = 0
        for entry in (e.strip() for e in m.group(2).split(",")):
            if not entry:
                continue
            em = re.fullmatch(r"(\w+)(?:\s*=\s*(.+))?", entry, flags=re.S)
            if not em:
                raise ValueError(f"enum {m.group(1)}: cannot read {entry!r}")
            following = _evaluate(em.group(2), {**defines, **items}) if em.group(2) else following
            items[em.group(1)] = following
            following += 1
        enums[m.group(1)] = items
    structs: Dict[str, Struct] = {}
    for m in re.finditer(r"\bstruct\s+(\w+)\s*\{(.*?)\}\s*;", body, flags=re.S):
        structs[m.group(1)] = _layout(m.group(1), m.group(2), defines, structs)
    names = [_short(n) for n in defines] + [_short(n) for items in enums.values() for n in items]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"names the Python module would define twice: {twice}")
    return Header(defines, enums, structs)


def _layout(name: str, members: str, defines: Dict[str, int], structs: Dict[str, Struct]) -> Struct:
    """One struct's fields with their offsets, and its size, as the C compiler
    lays them out (each member at a multiple of its alignment)."""
    fields: List[Field] = []
    at, align = 0, 1
    for decl in (d.strip() for d in members.split(";")):
        if not decl:
            continue
        dm = re.fullmatch(r"((?:struct\s+\w+)|(?:unsigned\s+(?:long\s+long|int)))\s+(\w+)"
                          r"\s*(?:\[(.+)\])?", " ".join(decl.split()))
        if not dm:
            raise ValueError(f"struct {name}: cannot read the member {decl!r}")
        ctype, fname, length = dm.group(1), dm.group(2), dm.group(3)
        if ctype in SCALARS:
            size, falign = SCALARS[ctype]
        elif ctype.startswith("struct ") and ctype[len("struct "):] in structs:
            inner = structs[ctype[len("struct "):]]
            size, falign = inner.size, inner.align
        else:
            raise ValueError(f"struct {name}.{fname}: {ctype} is not a type of the header")
        count = _evaluate(length, defines) if length is not None else 1
        at = -(-at // falign) * falign
        fields.append(Field(fname, ctype, count, length is not None, at, size))
        at += size * count
        align = max(align, falign)
    return Struct(name, -(-at // align) * align, align, tuple(fields))


def read_header(path: str = HEADER) -> Header:
    with open(path) as f:
        return parse(f.read())


def cdef(header: Header) -> str:
    """The cffi cdef of the header: each #define's value, each enum's
    enumerators and each struct's fields come from the compiler, which
    checks the field lists (API mode)."""
    out = ["/* generated from bpf_src/memcg_record.h by csrc/record_header.py */"]
    out += [f"#define {name} ..." for name in header.defines]
    for name, items in header.enums.items():
        out.append(f"enum {name} {{ {', '.join(items)}, ... }};")
    for s in header.structs.values():
        out.append(f"struct {s.name} {{")
        out += [f"    {f.ctype} {f.name}{f'[{f.count}]' if f.is_array else ''};" for f in s.fields]
        out.append("};")
    return "\n".join(out) + "\n"


def _short(name: str) -> str:
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def python_module(header: Header) -> str:
    """pymemcg/_record_h.py: the header's constants (without the PMC_ prefix),
    its enums and its struct layouts, for Python that has no compiled part."""
    out = ['"""The record format of bpf_src/memcg_record.h, as Python.',
           "",
           "Generated at build time by csrc/record_header.py (setup.py writes it): do not",
           "edit; change the header. pymemcg.record_format builds the struct formats from",
           "STRUCTS; pymemcg.wire checks all of it against the compiled part at import.",
           '"""',
           "",
           "from typing import Dict, Tuple",
           ""]
    for name, value in header.defines.items():
        out.append(f"{_short(name)} = {value:#x}" if value > 0xFFFF else f"{_short(name)} = {value}")
    for items in header.enums.values():
        out += [f"{_short(name)} = {value}" for name, value in items.items()]
    out += ["",
            "#: each #define of the header by its C name",
            "DEFINES: Dict[str, int] = {"]
    out += [f"    {name!r}: {_short(name)}," for name in header.defines]
    out += ["}",
            "#: each enum of the header: {enumerator's C name: value}",
            "ENUMS: Dict[str, Dict[str, int]] = {"]
    for ename, items in header.enums.items():
        out.append(f"    {ename!r}: {{")
        out += [f"        {name!r}: {_short(name)}," for name in items]
        out.append("    },")
    out += ["}",
            "#: each struct of the header: (sizeof, fields), a field being (name, C type,",
            "#: array length or 0 for a scalar, offset, bytes of one element)",
            "STRUCTS: Dict[str, Tuple[int, Tuple[Tuple[str, str, int, int, int], ...]]] = {"]
    for s in header.structs.values():
        out.append(f"    {s.name!r}: ({s.size}, (")
        out += [f"        ({f.name!r}, {f.ctype!r}, {f.count if f.is_array else 0}, "
                f"{f.offset}, {f.size})," for f in s.fields]
        out.append("    )),")
    out.append("}")
    return "\n".join(out) + "\n"


def write_python_module(root: str, header_path: str = HEADER) -> str:
    """Write python_module() of the header under root (unless it is already
    that text, so that a rebuild leaves its mtime alone); returns its path."""
    path = os.path.join(root, PYTHON_MODULE)
    text = python_module(read_header(header_path))
    try:
        with open(path) as f:
            if f.read() == text:
                return path
    except FileNotFoundError:
        pass
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return path


if __name__ == "__main__":
    # python csrc/record_header.py [ROOT]: write ROOT/pymemcg/_record_h.py
    print(write_python_module(sys.argv[1] if len(sys.argv) > 1 else
                              os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
