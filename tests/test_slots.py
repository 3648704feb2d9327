"""Slot resolution over kernel facts: which backend, which program, which
slot, or why a stat is unavailable. Facts are fixtures captured from the BTF
of every kernel the matrix boots (tests/fixtures/kernel_facts, written by
tools/capture_facts.py), so these tests run the same on any host; variants
of them stand for kernels nobody here can boot (a 7.0 with the kfuncs but
7.1's enum moves, a release without a table, lists read from kallsyms)."""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import pytest

import pymemcg
from pymemcg import catalog, slots
from pymemcg.kernel_probe import facts_from_json, read_btf_facts, release_of
from pymemcg.release_tables import TABLES

PAGE = 4096
ALL = list(catalog.STATS)


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "kernel_facts")
CAPTURED = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(FIXTURES, "*.json")))


def captured(name: str) -> slots.KernelFacts:
    with open(os.path.join(FIXTURES, name + ".json")) as f:
        return facts_from_json(json.load(f))


@pytest.fixture(scope="module")
def host():
    """6.18 as captured from this machine's kernel (CO-RE, a table, no kallsyms)."""
    return captured("6.18-host")


def test_fixtures_cover_the_matrix():
    """Every Debian series from 6.1 to 7.3, and this machine's kernel."""
    assert {"6.1", "6.12", "6.16", "6.17", "6.18", "6.19", "7.0", "7.1", "7.2", "7.3",
            "6.18-host"} <= set(CAPTURED)


def test_live_kernel_matches_its_fixture():
    """The capture is what the running kernel's BTF says (where one was taken
    of this release), so the fixture tests stand for it."""
    live = read_btf_facts(release_of(os.uname().release))
    assert live.state_len and live.events_len and live.memory_events_len
    name = f"{live.release}-host"
    if name in CAPTURED and captured(name).events_len == live.events_len:
        assert captured(name) == live, name


def by_name(res):
    return {r.stat.name: r for r in res}


def test_release_of():
    assert release_of("6.18.44-fc-v657") == "6.18"
    assert release_of("6.1.0-56-cloud-amd64") == "6.1"


def test_host_resolves_through_its_table(host):
    res = by_name(slots.resolve(ALL, host, 1, PAGE))
    unavailable = {n for n, r in res.items() if not r.available}
    # only the cgroup v2 counters and settings, memory.events' counter of
    # 6.19+, and pressure (cgroup v2 only); everything else has a proven slot
    pressure = {n for n, s in catalog.STATS.items() if s.kind == catalog.PRESSURE}
    assert unavailable == {"swap_usage", "swap_peak", "swap_limit", "memory_min", "memory_low",
                           "memory_high", "swap_high", "zswap_max", "oom_group",
                           "zswap_current", "sock_throttled"} | pressure
    assert res["soft_limit"].kind == slots.KIND_FIELD and res["soft_limit"].scale == PAGE
    assert res["anon"].via == slots.VIA_TABLE and res["anon"].kind == slots.KIND_STATE
    assert res["pgfault"].kind == slots.KIND_EVENT
    assert res["oom_kill"].via == slots.VIA_ENUM
    assert res["usage"].via == slots.VIA_FIELD
    assert res["kernel_stack"].scale == 1024 and res["percpu"].scale == 1
    assert res["anon"].scale == PAGE and res["workingset_refault_file"].scale == 1
    state_slots = [r.slot for r in res.values() if r.kind == slots.KIND_STATE]
    assert len(state_slots) == len(set(state_slots)) and max(state_slots) < host.state_len


def test_fields_resolve_from_btf_facts():
    """A mem_cgroup / cgroup field is read where the kernel's BTF has it:
    6.12 (Debian: no CONFIG_MEMCG_V1, no CONFIG_ZSWAP) has neither
    soft_limit nor zswap_max; 7.3 has zswap_max. A capture without field
    facts leaves the check to the program (bpf_core_field_exists)."""
    names = ["soft_limit", "zswap_max", "oom_group", "nr_descendants", "nr_dying_descendants",
             "memory_min", "memory_low", "memory_high", "swap_high", "limit"]
    v12 = by_name(slots.resolve(names, captured("6.12"), 1, PAGE))
    assert not v12["soft_limit"].available
    assert "mem_cgroup has no soft_limit" in v12["soft_limit"].detail
    assert v12["nr_descendants"].available and v12["nr_descendants"].scale == 1
    v73 = by_name(slots.resolve(names, captured("7.3"), 2, PAGE,
                                backend=slots.BACKEND_KFUNC))
    assert not by_name(slots.resolve(["zswap_max"], captured("6.12"), 2, PAGE))[
        "zswap_max"].available
    # no kfunc serves these: CO-RE on the kfunc backend too
    assert (v73["zswap_max"].via, v73["zswap_max"].kind) == (slots.VIA_FIELD, slots.KIND_FIELD)
    assert v73["zswap_max"].slot == slots.FIELDS["ZSWAP_MAX"] and v73["zswap_max"].scale == PAGE
    assert (v73["oom_group"].slot, v73["oom_group"].scale) == (slots.FIELDS["OOM_GROUP"], 1)
    assert [v73[n].slot for n in ("memory_min", "memory_low", "memory_high", "swap_high")] == \
        [slots.COUNTERS[c] for c in ("MEMORY_MIN", "MEMORY_LOW", "MEMORY_HIGH", "SWAP_HIGH")]
    assert v73["memory_high"].kind == slots.KIND_COUNTER and v73["memory_high"].scale == PAGE
    unknown = dataclasses.replace(captured("6.12"), fields=None)
    assert by_name(slots.resolve(["zswap_max"], unknown, 2, PAGE))["zswap_max"].available


def test_sock_throttled_where_the_enum_has_it():
    """memory.events' sock_throttled is MEMCG_SOCK_THROTTLED (6.19+): its slot
    is its enumerator, from BTF; unavailable before."""
    for release, ok in (("6.18", False), ("6.19", True), ("7.0", True), ("7.3", True)):
        facts = captured(release)
        r = slots.resolve(["sock_throttled"], facts, 2, PAGE, backend=slots.BACKEND_CORE)[0]
        assert r.available == ok, release
        if ok:
            assert (r.kind, r.slot) == (slots.KIND_MEMEVENT,
                                        facts.enums["memcg_memory_event"]["MEMCG_SOCK_THROTTLED"])
            assert r.slot < facts.memory_events_len


def test_wrong_array_length_makes_stats_unavailable(host):
    broken = dataclasses.replace(host, state_len=(host.state_len or 0) + 1)
    res = by_name(slots.resolve(["anon", "pgfault", "usage", "oom_kill"], broken, 1, PAGE))
    assert not res["anon"].available and "length" in res["anon"].detail
    assert res["pgfault"].available  # events[] still matches
    assert res["usage"].available and res["oom_kill"].available


def test_undecidable_config_is_resolved_by_length(host):
    # PGPGIN/PGPGOUT sit under CONFIG_MEMCG_V1, which no enum reveals
    without = dataclasses.replace(host, events_len=(host.events_len or 0) - 2)
    res = by_name(slots.resolve(["pgpgin", "pgfault"], without, 2, PAGE))
    assert not res["pgpgin"].available
    assert res["pgfault"].available and res["pgfault"].slot == 10


def test_unknown_release_gets_no_table(host):
    future = dataclasses.replace(host, release="6.99")
    res = by_name(slots.resolve(["anon", "pgfault", "usage", "oom_kill"], future, 1, PAGE))
    assert not res["anon"].available and "no item table" in res["anon"].detail
    assert not res["pgfault"].available
    assert res["usage"].available and res["oom_kill"].available


def test_missing_enumerator(host):
    enums = {k: dict(v) for k, v in host.enums.items()}
    del enums["node_stat_item"]["NR_SHMEM_THPS"]
    facts = dataclasses.replace(host, enums=enums)
    res = by_name(slots.resolve(["shmem_thp"], facts, 1, PAGE))
    assert not res["shmem_thp"].available and "not in this kernel's BTF" in res["shmem_thp"].detail


def test_6_1_by_enum_layout():
    facts = captured("6.1")
    assert facts.state_len == facts.enums["memcg_stat_item"]["MEMCG_NR_STAT"]
    assert facts.state_local_len is None
    res = by_name(slots.resolve(ALL, facts, 1, PAGE))
    assert res["anon"].slot == facts.enums["node_stat_item"]["NR_ANON_MAPPED"]
    assert res["swap"].slot == facts.enums["memcg_stat_item"]["MEMCG_SWAP"]
    # memcg_vm_event_stat[] as a booted 6.1 lists it in kallsyms: PGFAULT
    # seventh, THP_COLLAPSE_ALLOC last of 15
    assert res["pgfault"].slot == 6 and res["thp_collapse_alloc"].slot == 14
    # the rest of state[] is never updated per memcg on 6.1
    assert not res["pgdemote_kswapd"].available and not res["hugetlb"].available
    local = by_name(slots.resolve(["anon", "pgfault", "oom_kill"], facts, 1, PAGE, local=True))
    assert not local["anon"].available and "per CPU" in local["anon"].detail
    assert not local["pgfault"].available and local["oom_kill"].available


def test_6_1_zswap_items_follow_config():
    """Debian's 6.1 is built without CONFIG_ZSWAP (no ZSWPIN enumerator):
    MEMCG_ZSWAP_B exists but is never updated, so zswap is unavailable; with
    the option the same table serves it, and events[] grows by two."""
    facts = captured("6.1")
    assert "ZSWPIN" not in facts.enums["vm_event_item"]
    res = by_name(slots.resolve(["zswap", "pgfault"], facts, 1, PAGE))
    assert not res["zswap"].available and res["pgfault"].available
    enums = {k: dict(v) for k, v in facts.enums.items()}
    enums["vm_event_item"].update(ZSWPIN=900, ZSWPOUT=901)
    zswap = dataclasses.replace(facts, enums=enums, events_len=facts.events_len + 2)
    res = by_name(slots.resolve(["zswap", "thp_collapse_alloc"], zswap, 1, PAGE))
    assert res["zswap"].available and res["thp_collapse_alloc"].slot == 16


def test_kallsyms_lists_win_and_are_cross_checked(host):
    table = slots.match_table(host)
    state = tuple(host.value(n) for n in sorted(table.state_slots, key=table.state_slots.get))
    events = tuple(host.value(n)
                   for n in sorted(table.event_slots, key=table.event_slots.get))
    same = dataclasses.replace(host, kallsyms_state=state, kallsyms_events=events)
    res = by_name(slots.resolve(["anon", "pgfault"], same, 1, PAGE))
    assert res["anon"].via == slots.VIA_KALLSYMS and "agrees" in res["anon"].detail
    swapped = list(state)
    i, j = swapped.index(host.value("NR_ANON_MAPPED")), swapped.index(host.value("NR_FILE_PAGES"))
    swapped[i], swapped[j] = swapped[j], swapped[i]
    other = dataclasses.replace(host, kallsyms_state=tuple(swapped), kallsyms_events=events)
    res = by_name(slots.resolve(["anon"], other, 1, PAGE))
    assert res["anon"].slot == j and "DIFFERS" in res["anon"].detail
    short = dataclasses.replace(host, release="6.99", kallsyms_state=state[:-1])
    res = by_name(slots.resolve(["anon"], short, 1, PAGE))
    assert not res["anon"].available and "kallsyms state list" in res["anon"].detail
    bogus = dataclasses.replace(host, release="6.99", kallsyms_state=(state[0],) * len(state))
    res = by_name(slots.resolve(["anon"], bogus, 1, PAGE))
    assert not res["anon"].available and "not distinct" in res["anon"].detail


def test_backend_selection(host):
    assert slots.select_backend(host) == slots.BACKEND_CORE  # 6.18: no kfuncs
    v70 = dataclasses.replace(host, kfuncs=frozenset(slots.MEMCG_KFUNCS))
    assert slots.select_backend(v70) == slots.BACKEND_KFUNC
    assert slots.select_backend(v70, local=True) == slots.BACKEND_CORE
    rfc = dataclasses.replace(host, kfuncs=frozenset(slots.RFC_KFUNCS))
    assert slots.select_backend(rfc) == slots.BACKEND_RFC
    partial = dataclasses.replace(host, kfuncs=frozenset(slots.MEMCG_KFUNCS[:3]))
    assert slots.select_backend(partial) == slots.BACKEND_CORE


def test_kfunc_resolution_follows_the_enum(host):
    v70 = dataclasses.replace(host, release="7.0", kfuncs=frozenset(slots.MEMCG_KFUNCS))
    res = by_name(slots.resolve(["anon", "pgscan_kswapd", "oom_kill", "usage", "peak"], v70,
                                 2, PAGE))
    assert res["anon"].via == slots.VIA_KFUNC and res["anon"].kind == slots.KIND_STATE
    assert res["anon"].item == host.enums["node_stat_item"]["NR_ANON_MAPPED"]
    assert res["pgscan_kswapd"].kind == slots.KIND_EVENT
    assert res["oom_kill"].kind == slots.KIND_MEMEVENT
    assert res["usage"].via == slots.VIA_KFUNC and res["usage"].scale == 1
    # no kfunc reads the other page-counter fields: CO-RE does, in pages
    assert res["peak"].via == slots.VIA_FIELD and res["peak"].scale == PAGE
    # Linux 7.1: PGSCAN*/PGSTEAL*/PGREFILL moved to node_stat_item
    enums = {k: dict(v) for k, v in host.enums.items()}
    moved = enums["vm_event_item"].pop("PGSCAN_KSWAPD")
    enums["node_stat_item"]["PGSCAN_KSWAPD"] = 60
    v71 = dataclasses.replace(v70, release="7.1", enums=enums)
    r = by_name(slots.resolve(["pgscan_kswapd"], v71, 2, PAGE))["pgscan_kswapd"]
    assert r.kind == slots.KIND_STATE and r.item == 60 and moved != 60
    # and MEMCG_VMALLOC became the node stat NR_VMALLOC: the alias resolves it
    assert by_name(slots.resolve(["vmalloc"], v70, 2, PAGE))["vmalloc"].available
    enums["memcg_stat_item"].pop("MEMCG_VMALLOC")
    enums["node_stat_item"]["NR_VMALLOC"] = 61
    r = by_name(slots.resolve(["vmalloc"], v71, 2, PAGE))["vmalloc"]
    assert r.via == slots.VIA_KFUNC and r.kind == slots.KIND_STATE and r.item == 61
    enums["node_stat_item"].pop("NR_VMALLOC")
    r = by_name(slots.resolve(["vmalloc"], v71, 2, PAGE))["vmalloc"]
    assert not r.available and "MEMCG_VMALLOC or NR_VMALLOC" in r.detail


def test_unknown_names_raise():
    with pytest.raises(pymemcg.UnknownStat):
        slots.resolve(["nope"], slots.KernelFacts("6.18", {}, 1, 1, 1), 1, PAGE)


def test_plan_picks_backend_programs_and_flags(host):
    core = slots.plan(dataclasses.replace(host, kfuncs=frozenset()))
    assert (core.backend, core.kfuncs, core.flush) == (slots.BACKEND_CORE, slots.KFUNCS_NONE,
                                                       False)
    assert (core.tree_program, core.single_program) == ("pmc_memcg_iter", "pmc_memcg_iter_path")
    with pytest.raises(pymemcg.FlushUnavailable, match="flush=False"):
        slots.plan(dataclasses.replace(host, kfuncs=frozenset()), flush=True)

    v70 = dataclasses.replace(host, release="7.0", kfuncs=frozenset(slots.MEMCG_KFUNCS))
    p = slots.plan(v70, flush=True)
    assert (p.backend, p.kfuncs, p.flush) == (slots.BACKEND_KFUNC, slots.KFUNCS_MEMCG, True)
    assert (p.tree_program, p.single_program) == ("pmc_memcg_iter_flush",
                                                  "pmc_memcg_iter_path_flush")
    # local values come from CO-RE, but the flush kfunc still runs first
    p = slots.plan(v70, local=True, flush=True)
    assert (p.backend, p.kfuncs, p.flush) == (slots.BACKEND_CORE, slots.KFUNCS_MEMCG, True)

    # a kernel missing one of the kfuncs (a backport, say) is a CO-RE kernel
    partial = dataclasses.replace(v70, kfuncs=frozenset(slots.MEMCG_KFUNCS[:-1]))
    assert slots.plan(partial).kfuncs == slots.KFUNCS_NONE

    rfc = dataclasses.replace(host, kfuncs=frozenset(slots.RFC_KFUNCS))
    p = slots.plan(rfc, flush=True)
    assert (p.backend, p.kfuncs, p.flush) == (slots.BACKEND_RFC, slots.KFUNCS_RFC, True)
    # a kernel with both sets takes the merged one
    both = dataclasses.replace(host, kfuncs=frozenset(slots.RFC_KFUNCS + slots.MEMCG_KFUNCS))
    assert slots.plan(both).kfuncs == slots.KFUNCS_MEMCG


def test_rfc_resolution_asks_only_for_items_the_tables_prove(host):
    rfc = dataclasses.replace(host, kfuncs=frozenset(slots.RFC_KFUNCS))
    names = ["anon", "sock", "pgfault", "oom_kill", "usage", "limit"]
    core = by_name(slots.resolve(names, host, 1, PAGE))
    res = by_name(slots.resolve(names, rfc, 1, PAGE))
    for n in ("anon", "sock", "pgfault"):
        assert core[n].available
        assert res[n].via == slots.VIA_KFUNC and res[n].scale == 1
        assert res[n].item == host.value(core[n].stat.item) and res[n].kind == core[n].kind
    assert res["sock"].flags & slots.SPEC_MEMCG_ITEM          # memcg_stat_fetch()
    assert not res["anon"].flags & slots.SPEC_MEMCG_ITEM      # memcg_node_stat_fetch()
    # memory events and page counters have no RFC kfunc: CO-RE
    assert res["oom_kill"].via == slots.VIA_ENUM
    assert res["usage"].via == res["limit"].via == slots.VIA_FIELD
    # an item no table proves stays unavailable: the RFC would answer 0
    bare = dataclasses.replace(rfc, release="6.99")
    assert not by_name(slots.resolve(["anon"], bare, 1, PAGE))["anon"].available


@pytest.mark.parametrize("name", CAPTURED)
def test_captured_kernel_resolves_consistently(name):
    """On every captured kernel: the backend its kfuncs call for; every stat
    of its release's table resolved (or said why not); no two stats in one
    slot; every slot inside its array."""
    facts = captured(name)
    plan = slots.plan(facts)
    has_kfuncs = all(k in facts.kfuncs for k in slots.MEMCG_KFUNCS)
    assert plan.backend == (slots.BACKEND_KFUNC if has_kfuncs else slots.BACKEND_CORE)
    for local in (False, True):
        res = slots.resolve(ALL, facts, 2, PAGE, local=local,
                             backend=slots.plan(facts, local=local).backend)
        seen = {}
        for r in res:
            if not r.available:
                assert r.detail, r.stat.name
                continue
            if r.via in (slots.VIA_TABLE, slots.VIA_KALLSYMS, slots.VIA_ENUM):
                key = (r.kind, r.slot)
                # two names of one kernel item (zswap, zswap_current) share its slot
                assert key not in seen or catalog.STATS[seen[key]].item == r.stat.item, \
                    f"{r.stat.name} and {seen.get(key)} share a slot"
                seen[key] = r.stat.name
                length = {slots.KIND_STATE: facts.state_local_len if local else facts.state_len,
                          slots.KIND_EVENT: facts.events_local_len if local else facts.events_len,
                          slots.KIND_MEMEVENT: facts.memory_events_len}[r.kind]
                assert r.slot < length, r.stat.name
            if r.via == slots.VIA_KFUNC and r.kind in (slots.KIND_STATE, slots.KIND_EVENT):
                assert r.item in {v for e in facts.enums.values() for v in e.values()}
        table = TABLES.get(facts.release)
        by = by_name(res)
        if table is not None and not (local and not table.has_local_arrays):
            match = slots.match_table(facts)   # the variant this kernel's config gives
            assert match is not None and not match.problems, \
                f"{name}: its release's table does not match its BTF: {match.problems}"
            missing = [s.name for s in catalog.STATS.values()
                       if s.item in {**match.state_slots, **match.event_slots}
                       and not by[s.name].available]
            assert not missing, f"{name}: table items unresolved: {missing}"
        if has_kfuncs and not local:
            assert by["anon"].via == slots.VIA_KFUNC and by["pgfault"].via == slots.VIA_KFUNC


#: release -> the fixtures its table was checked against (every booted table has one)
TABLE_FIXTURES = {"6.1": "6.1", "6.12": "6.12", "6.16": "6.16", "6.17": "6.17",
                  "6.18": "6.18", "6.19": "6.19", "7.0": "7.0", "7.1": "7.1", "7.2": "7.2",
                  "7.3": "7.3"}


def test_every_booted_table_has_a_fixture():
    booted = {r for r, t in TABLES.items() if t.booted}
    assert booted == set(TABLE_FIXTURES)
    assert {r for r, t in TABLES.items() if not t.booted} == {"6.8"}


@pytest.mark.parametrize("release", sorted(TABLE_FIXTURES))
def test_table_matches_its_kernel_exactly(release):
    """Each table fits its Debian kernel's BTF in exactly one reading, and
    every slot of the array is accounted for (no item left over, none short)."""
    facts = captured(TABLE_FIXTURES[release])
    match = slots.match_table(facts)
    assert match is not None and not match.problems, match and match.problems
    if TABLES[release].state_layout == "compacted":
        assert sorted(match.state_slots.values()) == list(range(facts.state_len))
    assert sorted(match.event_slots.values()) == list(range(facts.events_len))
    # refused one slot off either way
    for delta in (-1, 1):
        off = dataclasses.replace(facts, events_len=facts.events_len + delta)
        assert slots.match_table(off).problems


@pytest.mark.parametrize("release", ["6.16", "7.0"])
def test_borrowed_table_gives_the_booted_kernels_own_slots(release):
    """6.16 and 7.0 have no source in Debian's registry: their tables are a
    neighbour's lists, kept because the booted kernel's own lists (through
    kallsyms, recorded by the matrix in tests/fixtures/booted_slots) put
    every stat at the same slot. Resolved from the table alone, every one of
    them lands there again."""
    with open(os.path.join(os.path.dirname(FIXTURES), "booted_slots", release + ".json")) as f:
        booted = json.load(f)
    facts = captured(release)
    assert facts.kallsyms_state is None and facts.kallsyms_events is None  # the table alone
    compared = 0
    for scope, local in (("hierarchical", False), ("local", True)):
        res = by_name(slots.resolve(ALL, facts, 2, PAGE, local=local))
        for name, (kind, slot) in booted[scope].items():
            if res[name].via == slots.VIA_KFUNC:   # 7.0's hierarchical values
                continue
            assert res[name].via == slots.VIA_TABLE and (res[name].kind, res[name].slot) == (kind, slot), \
                (scope, name, res[name])
            compared += 1
    assert compared >= 60


def test_7_1_reclaim_counters_are_read_from_state():
    """From 7.1 PGSCAN*/PGSTEAL*/PGREFILL are node_stat_item: on CO-RE (local
    values) they come from state[], at the table's slot, unscaled counts."""
    for name in ("7.1", "7.2", "7.3"):
        facts = captured(name)
        match = slots.match_table(facts)
        res = by_name(slots.resolve(["pgscan_kswapd", "pgrefill", "pgfault"], facts, 2, PAGE,
                                     local=True, backend=slots.BACKEND_CORE))
        assert res["pgscan_kswapd"].kind == slots.KIND_STATE
        assert res["pgscan_kswapd"].slot == match.state_slots["PGSCAN_KSWAPD"]
        assert res["pgrefill"].kind == slots.KIND_STATE and res["pgrefill"].scale == 1
        assert res["pgfault"].kind == slots.KIND_EVENT
    # 7.3 has two more node items before PGREFILL than 7.2
    s72 = slots.match_table(captured("7.2")).state_slots
    s73 = slots.match_table(captured("7.3")).state_slots
    assert s73["PGREFILL"] == s72["PGREFILL"] + 3 and s73["NR_VMSCAN_WRITE"] == 23


def test_enum_indexed_state_needs_no_table():
    """A release without a table whose state[] is sized MEMCG_NR_STAT (here 6.1's
    BTF under another release string) still gets every state stat, at its
    enumerator, exactly as the 6.1 table gives it; events[] stays unavailable."""
    real = captured("6.1")
    facts = dataclasses.replace(real, release="6.5")
    assert "6.5" not in TABLES and slots.enum_indexed(facts)
    res = by_name(slots.resolve(ALL, facts, 2, PAGE))
    ref = by_name(slots.resolve(ALL, real, 2, PAGE))
    states = [n for n, s in catalog.STATS.items() if s.kind == catalog.STATE]
    served = {n for n in states if res[n].available}
    assert served == {n for n in states if ref[n].available} and "anon" in served
    for n in served:
        assert res[n].via == slots.VIA_ENUM and "no table needed" in res[n].detail
        assert (res[n].kind, res[n].slot) == (ref[n].kind, ref[n].slot)
    assert not res["pgfault"].available and "events[]" in res["pgfault"].detail
    # a compacted state[] has no such shortcut
    compacted = dataclasses.replace(captured("6.18"), release="6.15")
    assert not slots.enum_indexed(compacted)
    assert not by_name(slots.resolve(["anon"], compacted, 2, PAGE))["anon"].available


def _ubuntu_6_8_like(events_len_delta: int = 0) -> slots.KernelFacts:
    """A kernel shaped as the 6.8 source says: 6.12's enums (Debian 6.12 has
    every enumerator the 6.8 lists name; no CONFIG_ZSWAP), state[] by enum
    value, events[] as long as 6.8's memcg_vm_event_stat[] is there."""
    base = captured("6.12")
    assert "ZSWPIN" not in base.enums["vm_event_item"]
    nr = base.enums["memcg_stat_item"]["MEMCG_NR_STAT"]
    events = 15 + 4          # the always-listed items and THP's four
    return dataclasses.replace(base, release="6.8", state_len=nr, state_local_len=nr,
                               events_len=events + events_len_delta,
                               events_local_len=events + events_len_delta,
                               kallsyms_state=None, kallsyms_events=None)


def test_6_8_table_from_source_only_where_btf_matches():
    facts = _ubuntu_6_8_like()
    match = slots.match_table(facts)
    assert not match.problems
    assert match.detail.startswith("table 6.8, from source, not booted here")
    assert match.event_slots["PGFAULT"] == 8 and match.event_slots["THP_SWPOUT_FALLBACK"] == 18
    res = by_name(slots.resolve(["anon", "pgfault", "pgscan_khugepaged"], facts, 2, PAGE))
    assert res["pgfault"].via == slots.VIA_TABLE and res["pgfault"].slot == 8
    assert "from source, not booted here" in res["pgfault"].detail
    assert res["anon"].slot == facts.enums["node_stat_item"]["NR_ANON_MAPPED"]
    # with CONFIG_ZSWAP (the enumerators) and CONFIG_MEMCG_KMEM (the length): 3 more
    enums = {k: dict(v) for k, v in facts.enums.items()}
    enums["vm_event_item"].update(ZSWPIN=900, ZSWPOUT=901, ZSWPWB=902)
    zs = dataclasses.replace(facts, enums=enums, events_len=22)
    assert slots.match_table(zs).event_slots["ZSWPWB"] == 17
    # any other length is refused: its events are unavailable, never guessed
    for delta in (-1, 1, 3):
        bad = _ubuntu_6_8_like(delta)
        assert slots.match_table(bad).problems
        r = by_name(slots.resolve(["pgfault", "anon"], bad, 2, PAGE))
        assert not r["pgfault"].available and r["anon"].available
