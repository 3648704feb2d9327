"""The backends behind a Reader, one calling convention for all:

    backend.read(path) -> Record         one cgroup directory
    backend.read_many(paths) -> list     read() of each: a Record, or None where
                                         no cgroup has that path (CgroupNotFound)
    backend.read_tree(path) -> Snapshot  it and every cgroup below, one walk
    backend.name, .selection, .read_method  what serves, which stats, how
    backend.loads_programs               whether it reads through BPF programs of its own
    backend.close()

bpf.py (with its bpf_*.py parts) reads records out of the BPF programs
(programs.py), text.py the kernel's own files (memory_stat.py), and
pinned.py puts shared pins (pins.py) in front of either.
"""

from typing import Callable, List, Optional, Protocol, Sequence

from ..decode import Selection, Record, Snapshot
from ..errors import CgroupNotFound


class Backend(Protocol):
    """The calling convention above, for type checkers."""

    @property
    def name(self) -> str: ...

    @property
    def selection(self) -> Selection: ...

    @property
    def read_method(self) -> str: ...

    @property
    def loads_programs(self) -> bool: ...

    def read(self, path: str) -> Record: ...

    def read_many(self, paths: Sequence[str]) -> List[Optional[Record]]: ...

    def read_tree(self, path: str) -> Snapshot: ...

    def close(self) -> None: ...


def read_each(read: Callable[[str], Record], paths: Sequence[str]) -> List[Optional[Record]]:
    """read_many as a loop of read(), for backends without a batched read."""
    out: List[Optional[Record]] = []
    for path in paths:
        try:
            out.append(read(path))
        except CgroupNotFound:
            out.append(None)
    return out
