"""The matrix's check that the two slot sources agree (vm/guest_run.py):
slots resolved from a kernel's own kallsyms lists against those from the
built-in tables alone, over captured kernel facts."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from pymemcg import catalog, slots

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "vm"))
import guest_run  # noqa: E402  (vm/ is scripts, not a package)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "kernel_facts")
NAMES = list(catalog.STATS)


def captured(name: str) -> slots.KernelFacts:
    with open(os.path.join(FIXTURES, name + ".json")) as f:
        from pymemcg.kernel_probe import facts_from_json
        return facts_from_json(json.load(f))


def resolved_slots(facts: slots.KernelFacts) -> dict:
    """What the guest's INFO_CMD records for one slot source."""
    return {level: {r.stat.name: [r.via, r.kind, r.slot, r.detail]
                    for r in slots.resolve(NAMES, facts, 2, 4096, local=level == "local",
                                            backend=slots.BACKEND_CORE)}
            for level in ("hierarchical", "local")}


def with_lists(facts: slots.KernelFacts, swap: bool = False) -> slots.KernelFacts:
    """The facts with kallsyms lists as the kernel would list them (the
    table's order), or with two event slots swapped."""
    match = slots.match_table(facts)
    values = {**facts.enums["vm_event_item"]}
    events = [values[n] for n, _ in sorted(match.event_slots.items(), key=lambda kv: kv[1])]
    if swap:
        events[0], events[1] = events[1], events[0]
    return dataclasses.replace(facts, kallsyms_events=tuple(events))


def test_lists_equal_to_the_table_agree():
    facts = captured("6.19")
    sources = {"kernel_lists": True, "table": True,
               "with_kallsyms": resolved_slots(with_lists(facts)), "without_kallsyms": resolved_slots(facts)}
    agree = guest_run.slot_agreement(sources)
    assert agree["ok"], agree
    assert agree["hierarchical"]["served_by_both"] > 60


def test_a_swapped_slot_is_a_disagreement():
    facts = captured("6.19")
    sources = {"kernel_lists": True, "table": True,
               "with_kallsyms": resolved_slots(with_lists(facts, swap=True)),
               "without_kallsyms": resolved_slots(facts)}
    agree = guest_run.slot_agreement(sources)
    assert not agree["ok"]
    assert len(agree["hierarchical"]["slot_differs"]) == 2
    assert len(agree["local"]["slot_differs"]) == 2


def test_without_a_table_the_extra_stats_are_listed():
    """A release without a table (6.15, never booted here): the lists serve
    stats the tables alone cannot; that is listed, and agreement holds
    (nothing served twice differently)."""
    facts = captured("6.17")
    lists = with_lists(facts)
    no_table = dataclasses.replace(facts, release="6.15")
    sources = {"kernel_lists": True, "table": False,
               "with_kallsyms": resolved_slots(dataclasses.replace(lists, release="6.15")),
               "without_kallsyms": resolved_slots(no_table)}
    agree = guest_run.slot_agreement(sources)
    assert agree["ok"]
    assert "pgfault" in agree["hierarchical"]["kernel_lists_only"]
    # with a table for the release, the same difference is a disagreement
    assert not guest_run.slot_agreement(dict(sources, table=True))["ok"]


def test_the_guest_records_both_slot_sources_here(bpf_ok):
    """The guest's one interpreter start (INFO_CMD) on this host's kernel
    records the slot sources it compares, with no error on the way."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYMEMCG_REQUIRE_BPF="1")
    info, err = guest_run.run_json(sys.executable, guest_run.INFO_CMD, env, root)
    assert info is not None, err
    assert "slot_sources_error" not in info, info["slot_sources_error"]
    sources = info["slot_sources"]
    served = {s["name"] for s in info["stats"] if s["backend"] == "bpf"}
    assert served and served <= set(sources["with_kallsyms"]["hierarchical"])
