"""Memory pressure (PSI): memory.pressure's some/full totals and averages.

Decoding (no kernel needed): the file's text into the record's units, and
where each value is in struct psi_group for a kernel's BTF facts. Then, on
the running kernel: on cgroup v1 (and where PSI is off) every pressure value
is unavailable with the reason; on cgroup v2 a cgroup that really stalls
(an allocating child over a small memory.high) is read through BPF between
two reads of memory.pressure and must equal them exactly, and the
Prometheus writer exports it in seconds and 0-1 ratios.
"""
from __future__ import annotations

import dataclasses
import os
import re
import time

import pytest

import pymemcg
from pymemcg import catalog, slots
from pymemcg.errors import MalformedData, StatUnavailable
from pymemcg.exposition import SharedSnapshot, TextWriter, raw_family
from pymemcg.kernel_probe import KernelFacts, kernel_facts, psi_running
from pymemcg.memory_stat import parse_pressure
from conftest import MiB

PRESSURE = [n for n, s in catalog.STATS.items() if s.kind == catalog.PRESSURE]

# --- decoding ---

SAMPLE = ("some avg10=5.23 avg60=0.07 avg300=100.00 total=1234567\n"
          "full avg10=0.00 avg60=12.50 avg300=0.01 total=89\n")


def test_names_follow_the_file():
    assert PRESSURE == [catalog.pressure_name(line, field)
                        for line in ("some", "full")
                        for field in ("total", "avg10", "avg60", "avg300")]
    assert "pressure_some_total_us" in PRESSURE and "pressure_full_avg300_x100" in PRESSURE
    for name in PRESSURE:
        assert catalog.STATS[name].cgroup_version == 2
        assert catalog.STATS[name].unit == (catalog.MICROSECONDS if name.endswith("_us")
                                            else catalog.PERCENT_X100)


def test_parse_pressure_units():
    """total= as printed (us); two-decimal percentages as hundredths."""
    assert parse_pressure(SAMPLE) == {
        "pressure_some_avg10_x100": 523, "pressure_some_avg60_x100": 7,
        "pressure_some_avg300_x100": 10000, "pressure_some_total_us": 1234567,
        "pressure_full_avg10_x100": 0, "pressure_full_avg60_x100": 1250,
        "pressure_full_avg300_x100": 1, "pressure_full_total_us": 89}
    assert parse_pressure(SAMPLE.encode()) == parse_pressure(SAMPLE)


@pytest.mark.parametrize("text", [
    "some avg10=5.2 avg60=0.07 avg300=1.00 total=1\n",      # one decimal
    "some avg10=5.23 avg60=0.07 avg300=1.00 total=-1\n",    # not a u64
    "some avg60=0.07 avg10=5.23 avg300=1.00 total=1\n",     # order
    "half avg10=5.23 avg60=0.07 avg300=1.00 total=1\n",     # line name
    "some avg10=5.23 avg60=0.07 avg300=1.00\n",             # no total
    "some avg10=x.23 avg60=0.07 avg300=1.00 total=1\n",
    "some avg10=5.23 avg60=0.07 avg300=1.00 total=1 extra=2\n",
])
def test_parse_pressure_refuses_other_text(text):
    with pytest.raises(MalformedData):
        parse_pressure(text)


def load_point_to_x100(fixed: int) -> int:
    """kernel/sched/psi.c prints LOAD_INT(x).LOAD_FRAC(x) (FSHIFT 11): what
    the BPF program computes from psi_group.avg[], as hundredths."""
    return (fixed >> 11) * 100 + (((fixed & 2047) * 100) >> 11)


def test_fixed_point_matches_what_the_file_prints():
    # the text of every fixed-point value, parsed, is the program's integer
    for fixed in (0, 1, 20, 21, 2047, 2048, 2049, 10 * 2048 + 1000, 100 * 2048):
        text = f"{fixed >> 11}.{((fixed & 2047) * 100) >> 11:02d}"
        line = f"some avg10={text} avg60=0.00 avg300=0.00 total=0\n"
        assert parse_pressure(line)["pressure_some_avg10_x100"] == load_point_to_x100(fixed)


def facts_with_psi(**changes) -> KernelFacts:
    """The PSI facts of Debian's 6.1 .. 7.3 and this host's kernels (BTF:
    psi_group.total[12], avg[18]; NR_PSI_STATES 7, no CONFIG_IRQ_TIME_ACCOUNTING)."""
    facts = KernelFacts(
        release="x", enums={
            "psi_states": {"PSI_IO_SOME": 0, "PSI_IO_FULL": 1, "PSI_MEM_SOME": 2,
                           "PSI_MEM_FULL": 3, "PSI_CPU_SOME": 4, "PSI_CPU_FULL": 5,
                           "PSI_NONIDLE": 6, "NR_PSI_STATES": 7},
            "psi_aggregators": {"PSI_AVGS": 0, "PSI_POLL": 1, "NR_PSI_AGGREGATORS": 2}},
        state_len=None, events_len=None, memory_events_len=None,
        psi_total_len=12, psi_avg_len=18, cgroup_has_psi=True)
    return dataclasses.replace(facts, **changes)


def test_resolve_indexes_the_flattened_arrays():
    res = {r.stat.name: r for r in slots.resolve(PRESSURE, facts_with_psi(), 2, 4096,
                                                  psi_on=True)}
    # total[PSI_AVGS][PSI_MEM_SOME] = total[0 * 6 + 2]; avg[PSI_MEM_FULL][2] = avg[3 * 3 + 2]
    assert (res["pressure_some_total_us"].slot, res["pressure_some_total_us"].item) == \
        (slots.PSI_TOTAL, 2)
    assert (res["pressure_full_total_us"].slot, res["pressure_full_total_us"].item) == \
        (slots.PSI_TOTAL, 3)
    assert (res["pressure_some_avg10_x100"].slot, res["pressure_some_avg10_x100"].item) == \
        (slots.PSI_AVG, 6)
    assert res["pressure_full_avg300_x100"].item == 11
    assert all(r.kind == slots.KIND_PRESSURE and r.scale == 1 for r in res.values())


def test_resolve_with_irq_pressure():
    """CONFIG_IRQ_TIME_ACCOUNTING adds PSI_IRQ_FULL before PSI_NONIDLE: the
    arrays grow to total[14], avg[21]; memory's entries keep their place in
    avg[] but total[PSI_AVGS] rows are 7 wide."""
    states = dict(facts_with_psi().enums["psi_states"], PSI_IRQ_FULL=6, PSI_NONIDLE=7,
                  NR_PSI_STATES=8)
    facts = facts_with_psi(enums={"psi_states": states, "psi_aggregators": {
        "PSI_AVGS": 1, "PSI_POLL": 0, "NR_PSI_AGGREGATORS": 2}}, psi_total_len=14,
        psi_avg_len=21)
    res = {r.stat.name: r for r in slots.resolve(PRESSURE, facts, 2, 4096)}
    assert res["pressure_some_total_us"].item == 7 + 2   # PSI_AVGS row 1 (made up here)
    assert res["pressure_full_avg60_x100"].item == 3 * 3 + 1


@pytest.mark.parametrize("changes, why", [
    ({"psi_total_len": 14}, "not the shape"),
    ({"psi_avg_len": None}, "without CONFIG_PSI"),
    ({"cgroup_has_psi": False}, "without CONFIG_PSI"),
    ({"enums": {}}, "without CONFIG_PSI"),
])
def test_resolve_refuses_what_btf_does_not_prove(changes, why):
    for r in slots.resolve(PRESSURE, facts_with_psi(**changes), 2, 4096, psi_on=True):
        assert not r.available and why in r.detail


def test_resolve_unavailable_on_v1_local_and_psi_off():
    for r in slots.resolve(PRESSURE, facts_with_psi(), 1, 4096, psi_on=True):
        assert not r.available and "cgroup v1 has no memory.pressure" in r.detail
    for r in slots.resolve(PRESSURE, facts_with_psi(), 2, 4096, psi_on=False):
        assert not r.available and "psi=0" in r.detail
    for r in slots.resolve(PRESSURE, facts_with_psi(), 2, 4096, local=True, psi_on=True):
        assert not r.available and "hierarchical only" in r.detail
    # what `pymemcg stats --local` says on a v1 host or with PSI off: the reason
    # that holds whatever local= is, not advice that would not help
    for r in slots.resolve(PRESSURE, facts_with_psi(), 1, 4096, local=True, psi_on=True):
        assert not r.available and "cgroup v1 has no memory.pressure" in r.detail
    for r in slots.resolve(PRESSURE, facts_with_psi(), 2, 4096, local=True, psi_on=False):
        assert not r.available and "psi=0" in r.detail
    from pymemcg.memory_stat import text_availability
    ok, why = text_availability("pressure_some_total_us", 1, True)
    assert not ok and "cgroup v1 has no memory.pressure" in why


def test_text_availability(monkeypatch):
    from pymemcg import memory_stat
    monkeypatch.setattr(memory_stat, "psi_running", lambda: True)
    assert memory_stat.text_availability("pressure_some_total_us", 2, False) == \
        (True, "memory.pressure")
    assert not memory_stat.text_availability("pressure_some_total_us", 1, False)[0]
    assert not memory_stat.text_availability("pressure_some_total_us", 2, True)[0]
    monkeypatch.setattr(memory_stat, "psi_running", lambda: False)
    ok, why = memory_stat.text_availability("pressure_full_avg10_x100", 2, False)
    assert not ok and "psi=0" in why


# --- the running kernel ---

def test_running_kernel_facts(bpf_ok):
    """This kernel's BTF has the layout the programs read (every kernel the
    matrix boots has CONFIG_PSI=y)."""
    facts = kernel_facts()
    assert facts.cgroup_has_psi and facts.psi_total_len and facts.psi_avg_len
    assert slots.resolve(PRESSURE, facts, 2, 4096, psi_on=True)[0].available


def test_unavailable_with_reason_where_not_served(bpf_ok, cgroups, cgroup_version):
    """cgroup v1 (or PSI off): no value, never a 0, and the reason."""
    if cgroup_version == 2 and psi_running():
        pytest.skip("served here: test_pressure_parity compares it")
    cg = cgroups.make("nopsi")
    for backend in ("bpf", "text"):
        with pymemcg.Reader(stats=PRESSURE + ["usage"], backend=backend) as r:
            rec = r.read(cg)
            assert rec["usage"] >= 0
            for name in PRESSURE:
                assert rec.get(name) is None
                with pytest.raises(StatUnavailable, match="memory.pressure|psi=0"):
                    rec[name]


STALL = """
import sys
print("ready", flush=True)
sys.stdin.readline()
b = bytearray({size})
b[::4096] = b"x" * len(b[::4096])   # each page touched, past memory.high
print("stalled", flush=True)
sys.stdin.read()
"""


def stalled_cgroup(cgroups) -> tuple:
    """A cgroup whose process allocated a little past memory.high and was
    throttled for it (mem_cgroup_handle_over_high: a memory stall of
    min(64 * overage^2, 2) s per 64 pages over, so about 0.5 s for 1 MiB over
    4 MiB of headroom); the process then holds its memory, asleep."""
    cg = cgroups.make("stall")
    proc = cgroups.spawn(cg, STALL.format(size=5 * MiB))
    with open(os.path.join(cg, "memory.current")) as f:
        high = int(f.read()) + 4 * MiB
    for name, value in (("memory.swap.max", "0"), ("memory.high", str(high))):
        if os.path.exists(os.path.join(cg, name)):
            with open(os.path.join(cg, name), "w") as f:
                f.write(value)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "stalled"
    return cg, proc


def read_pressure_file(cg: str) -> dict:
    with open(os.path.join(cg, "memory.pressure"), "rb") as f:
        return parse_pressure(f.read())


def needs_v2_psi(cgroup_version):
    if cgroup_version != 2 or not psi_running():
        pytest.skip("no memory.pressure here: test_unavailable_with_reason_where_not_served")


def bracketed_read(read, cg: str) -> tuple:
    """(read(cg), memory.pressure values) of a read between two reads of the
    file that agree: nothing moved in between."""
    for _ in range(100):
        before = read_pressure_file(cg)
        rec = read(cg)
        after = read_pressure_file(cg)
        if before == after:
            return rec, after
        time.sleep(0.05)
    pytest.fail(f"{cg}: memory.pressure never held still across a read")


def test_pressure_parity(bpf_ok, cgroups, cgroup_version):
    """A cgroup that really stalled. First BPF alone: it sees the group as
    of its last aggregation, never ahead of the file read right after, and
    with the same total once the group is quiet and aggregated. Then between
    two reads of memory.pressure, each of which aggregates the group
    (psi_show), the BPF read equals both: totals and averages. The text
    backend serves the same numbers, and the Prometheus writer the same in
    seconds and 0-1 ratios."""
    needs_v2_psi(cgroup_version)
    cg, proc = stalled_cgroup(cgroups)
    with pymemcg.Reader(stats=PRESSURE, backend="bpf") as r:
        early = r.read(cg)["pressure_some_total_us"]
        assert early <= read_pressure_file(cg)["pressure_some_total_us"]
        for _ in range(50):   # the group is idle: each file read aggregates what is left
            if r.read(cg)["pressure_some_total_us"] == \
                    read_pressure_file(cg)["pressure_some_total_us"]:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the total kept moving")
        rec, after = bracketed_read(r.read, cg)
        assert rec.as_dict() == after
        tree, files = bracketed_read(r.read_tree, cg)
        assert tree[tree.root].as_dict() == files
    # a real stall, so that the comparison is not of zeros
    assert after["pressure_some_total_us"] > 0 and after["pressure_full_total_us"] > 0
    with pymemcg.Reader(stats=PRESSURE, backend="text") as t:
        rec, files = bracketed_read(t.read, cg)
        assert rec.as_dict() == files
    # the Prometheus writer: seconds and 0-1 ratios, named for them
    with pymemcg.Reader(stats=PRESSURE, backend="bpf", for_trees=True) as r:
        writer = TextWriter([(n, *raw_family(n, False)) for n in PRESSURE], [], {})
        shared = SharedSnapshot(r.read_tree, cg, 0)
        text, files = bracketed_read(lambda _: writer.render(shared.read()).decode(), cg)
    rel = "/" + os.path.relpath(cg, pymemcg.cgroupfs.memory_mount().mountpoint)
    exported = dict(re.findall(r'^(memcg_\w+)\{cgroup="%s"[^}]*\} (\S+)$' % re.escape(rel),
                               text, re.M))
    want = {}
    for line in catalog.PRESSURE_LINES:
        total = files[catalog.pressure_name(line, "total")]
        want[f"memcg_pressure_{line}_seconds_total"] = repr(total / 1e6)
        for window in catalog.PRESSURE_WINDOWS:
            avg = files[catalog.pressure_name(line, window)]
            want[f"memcg_pressure_{line}_{window}_ratio"] = repr(avg / 1e4)
    assert exported == want
    proc.stdin.close()
    proc.wait()


def test_cgroup_pressure_off(bpf_ok, cgroups, cgroup_version):
    """cgroup.pressure 0 (Linux 6.1+): the kernel hides memory.pressure and
    stops the group's accounting; BPF and text both say unavailable."""
    needs_v2_psi(cgroup_version)
    cg = cgroups.make("off")
    with open(os.path.join(cg, "cgroup.pressure"), "w") as f:
        f.write("0")
    assert not os.path.exists(os.path.join(cg, "memory.pressure"))
    for backend in ("bpf", "text"):
        with pymemcg.Reader(stats=PRESSURE + ["usage"], backend=backend) as r:
            rec = r.read(cg)
            assert all(rec.get(n) is None for n in PRESSURE)
            if backend == "bpf":
                assert rec.flags & pymemcg.decode.REC_NO_PSI
                with pytest.raises(StatUnavailable, match="cgroup.pressure"):
                    rec["pressure_some_total_us"]


def test_root_is_the_systems_pressure(bpf_ok, cgroup_version):
    """The v2 root's psi group is psi_system (cgroup_psi()), found through
    kallsyms: its memory.pressure, as /proc/pressure/memory. Where kallsyms
    does not list it: unavailable, with the reason."""
    needs_v2_psi(cgroup_version)
    root = pymemcg.cgroupfs.memory_mount().mountpoint
    facts = kernel_facts()
    with pymemcg.Reader(stats=PRESSURE, backend="bpf") as r:
        if not facts.psi_system:
            # only where kallsyms has no data symbols (nor the item lists)
            assert facts.kallsyms_state is None and facts.kallsyms_events is None
            rec = r.read(root)
            assert all(rec.get(n) is None for n in PRESSURE)
            with pytest.raises(StatUnavailable, match="psi_system"):
                rec["pressure_some_total_us"]
            return
        rec, after = bracketed_read(r.read, root)
        assert rec.as_dict() == after
