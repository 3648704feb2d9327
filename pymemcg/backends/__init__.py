"""The backends behind a Reader, one calling convention for all:

    backend.read(path) -> Record         one cgroup directory
    backend.read_tree(path) -> Snapshot  it and every cgroup below, one walk
    backend.name, .layout, .read_method  what serves, which stats, how
    backend.loads_programs               whether it reads through BPF programs of its own
    backend.close()

bpf.py reads records out of the BPF programs (programs.py), text.py the
kernel's own files (memory_stat.py), and pinned.py puts shared pins (pins.py)
in front of either.
"""
