"""The kernel matrix's document, from build/vm/results: docs/matrix.md
(the summary table, then every guest, every stat). The README quotes its
totals; tests/test_readme.py checks them against this page."""

from __future__ import annotations

from typing import Dict, List, Optional

from kernels import KERNELS
from results import first_line, general_reason, load_results, verify_groups
from workspace import REPO, RESULTS, MatrixError, log

DOC = REPO / "docs" / "matrix.md"


def _names(names: List[str]) -> str:
    return ", ".join(f"`{n}`" for n in names) if names else "none"


def _text_served(r: dict) -> Optional[List[str]]:
    """Stats the text backend really returned here (a fresh child cgroup)."""
    if r.get("text_served") is not None:
        order = {s["name"]: i for i, s in enumerate(r.get("stats") or [])}
        return sorted(r["text_served"], key=lambda n: (order.get(n, len(order)), n))
    if r.get("text_available"):
        return [n for n, ok in r["text_available"].items() if ok]
    return None


def _bpf_backend(r: dict) -> str:
    """'bpf (kfunc, flush)': how the loader read this kernel's hierarchical stats."""
    plan = r.get("plan")
    if not plan:
        return "bpf"
    kinds = [plan["hierarchical"]["backend"]]
    if plan["local"]["backend"] != kinds[0]:
        kinds.append(f"local: {plan['local']['backend']}")
    if plan.get("flush"):
        kinds.append("flush")
    return f"bpf ({', '.join(kinds)})"


def _slot_label(via: str, detail: str) -> Optional[str]:
    """What a state/event slot came from: 'kernel lists', 'table 6.19', 'enum',
    'kfunc'; None for what has no slot (page counters, memory.events)."""
    if via == "kallsyms":
        return "kernel lists"
    if via == "table":
        return detail.split(" (")[0]
    if via == "btf-enum" and detail.startswith("state[]"):
        return "enum"
    if via == "kfunc" and detail.startswith("enum"):
        return "kfunc"
    return None


def _labels(pairs) -> str:
    found: List[str] = []
    for via, detail in pairs:
        label = _slot_label(via, detail)
        if label and label not in found:
            found.append(label)
    return " + ".join(found) or "none (page counters and memory.events only)"


def slot_source(r: dict, without_kallsyms: bool = False) -> str:
    """'kernel lists', 'table 6.19 + enum', 'kfunc; local: table 7.2': where the
    state[]/events[] slots of this run came from (hierarchical; local too
    when it differs)."""
    stats = r.get("stats_without_kallsyms" if without_kallsyms else "stats") or []
    hier = _labels(s["via"].partition(": ")[::2] for s in stats if s.get("backend") == "bpf")
    sources = (r.get("slot_sources") or {}).get(
        "without_kallsyms" if without_kallsyms else "with_kallsyms")
    if not sources:
        return hier
    local = _labels((v[0], v[3]) for v in sources["local"].values())
    return hier if local == hier else f"{hier}; local: {local}"


def _agreement_text(r: dict) -> str:
    """'agrees with the kernel lists' or what differs, in brief."""
    a = r.get("slot_agreement") or {}
    h = a.get("hierarchical") or {}
    if not a.get("ok"):
        return "DISAGREES with the kernel lists (see below)"
    if h.get("kernel_lists_only"):
        return (f"its CO-RE slots agree with the kernel lists on the {h['served_by_both']} "
                f"stats both serve; "
                f"{len(h['kernel_lists_only'])} only with the kernel lists (no table for "
                f"{r['kernel_series']} in the pymemcg tested)")
    return "agrees with the kernel lists"


def _verify_text(r: dict) -> str:
    """'verify 30 exact, 0 mismatched' or why verify gave no verdict."""
    v = r.get("verify")
    if not v:
        return "verify did not run"
    if v.get("error"):
        return f"verify did not run: {first_line(v['error'])[:120]}"
    c = v.get("counts") or {}
    return f"verify {c.get('exact', 0)} exact, {c.get('mismatch', 0)} mismatched"


def matrix_rows(results: List[dict]) -> List[dict]:
    """Two rows per result: the BPF backend and the text backend."""
    rows = []
    for r in results:
        stats = r.get("stats") or []
        names = [s["name"] for s in stats]
        bpf = [s["name"] for s in stats if s.get("backend") == "bpf"]
        counts = r.get("counts") or {}
        if r.get("error"):
            tested = f"FAIL: {r['error']}"
        elif counts:
            tested = (f"{'PASS' if r.get('passed') else 'FAIL'}, {_verify_text(r)}, "
                      f"{counts.get('passed', 0)}/{counts.get('total', 0)} parity tests"
                      + (f", {counts['failed']} failed" if counts.get("failed") else "")
                      + (f", {counts['errors']} errors" if counts.get("errors") else "")
                      + (f", {counts['skipped']} skipped" if counts.get("skipped") else ""))
        else:
            tested = "FAIL: no test results"
        base = {"kernel": r.get("kernel_release") or r["kernel_series"],
                "arch": r.get("arch") or r.get("machine") or "?",
                "cgroup": f"v{r.get('cgroup')}",
                "where": r.get("where", "") + (f", {r['numa_nodes']} NUMA nodes"
                                               if (r.get("numa_nodes") or 1) > 1 else ""),
                "total": len(stats), "passed": bool(r.get("passed"))}
        v = r.get("verify") or {}
        lists = (r.get("slot_sources") or {}).get("kernel_lists")
        rows.append(dict(base, backend=_bpf_backend(r), tested=f"{base['where']}: {tested}",
                         slots=("kallsyms on: " if lists else "") + slot_source(r),
                         served=bpf, verify=None if v.get("error") else v.get("counts"),
                         unavailable=[n for n in names if n not in bpf]))
        if r.get("verify_without_kallsyms") is not None:
            vt = r["verify_without_kallsyms"]
            st = r.get("stats_without_kallsyms") or []
            bpf_t = [s["name"] for s in st if s.get("backend") == "bpf"]
            rows.append(dict(
                base, backend=_bpf_backend(r),
                tested=f"{base['where']}: {_verify_text(dict(verify=vt))}, "
                       f"{_agreement_text(r)}",
                slots="PYMEMCG_KALLSYMS=0: " + slot_source(r, True),
                served=bpf_t, verify=None if vt.get("error") else vt.get("counts"),
                unavailable=[n for n in names if n not in bpf_t]))
        text = _text_served(r)
        rows.append(dict(base, backend="text", tested="the kernel's own files (the reference)",
                         slots="-",
                         passed=text is not None, served=text or [], verify=None,
                         unavailable=[n for n in names if n not in (text or [])]))
    return rows


def summary_table(results: List[dict]) -> str:
    lines = ["| kernel | arch | cgroup | backend | slot source | tested here | served | "
             "compared: exact | mismatched | served, not compared | unavailable |",
             "|---|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for row in matrix_rows(results):
        n = len(row["served"])
        c = row["verify"]
        if row["backend"] == "text":
            exact, bad, unc = ("reference" if row["passed"] else "?"), "-", "-"
        elif c is None:
            exact, bad, unc = "unverified", "-", "-"
        else:
            exact = f"{c['exact']}" + (f" ({c['exact_nonzero']} nonzero)"
                                       if "exact_nonzero" in c else "")
            bad, unc = str(c["mismatch"]), str(c["not compared"])
        lines.append(f"| {row['kernel']} | {row['arch']} | {row['cgroup']} | {row['backend']} | "
                     f"{row['slots']} | {row['tested']} | {n} of {row['total']} | {exact} | "
                     f"{bad} | {unc} | "
                     f"{len(row['unavailable'])} |")
    return "\n".join(lines)



def coverage(results: List[dict]) -> List[dict]:
    """Per release (kernel series): the stats BPF served on any of its guests
    (either slot source), those compared exact on at least one, and for each
    other one why no kernel file showed it (verify's reason, per guest)."""
    by_series: Dict[str, dict] = {}
    for r in results:
        arch = r.get("arch") or r.get("machine") or "x86_64"
        series = r["kernel_series"] + ("" if arch == "x86_64" else f" {arch}")
        c = by_series.setdefault(series, {"series": series, "served": [], "exact": set(),
                                          "why": {}})
        for key in ("verify", "verify_without_kallsyms"):
            for st in (r.get(key) or {}).get("stats") or []:
                if st["name"] not in c["served"]:
                    c["served"].append(st["name"])
                if st["outcome"] == "exact":
                    c["exact"].add(st["name"])
                else:
                    why = general_reason(st.get("why") or st["outcome"])
                    guests = c["why"].setdefault(st["name"], {}).setdefault(why, [])
                    if r["guest"] not in guests:
                        guests.append(r["guest"])
    out = []
    for c in by_series.values():
        c["never"] = {n: c["why"][n] for n in c["served"] if n not in c["exact"]}
        out.append(c)
    return out


def coverage_table(results: List[dict]) -> str:
    lines = ["| release | served through BPF | compared exact on some guest | "
             "never compared, and why no kernel file shows it |", "|---|---:|---:|---|"]
    for c in coverage(results):
        # the stats grouped by their reasons (every guest's, in guest order)
        groups: Dict[str, List[str]] = {}
        for n, whys in c["never"].items():
            key = "; ".join(f"{why} ({', '.join(gs)})" for why, gs in whys.items())
            groups.setdefault(key, []).append(n)
        never = "<br>".join(f"{_names(ns)}: {key}" for key, ns in groups.items()) or "none"
        lines.append(f"| {c['series']} | {len(c['served'])} | {len(c['exact'])} | {never} |")
    return "\n".join(lines)


def render_doc(results: List[dict]) -> str:
    out = ["# Kernel matrix", "",
           "Generated by `make matrix` (`vm/matrix.py`) from `build/vm/results/*.json`; do not "
           "edit by hand. Each guest boots a pinned Debian cloud kernel under qemu (TCG) with "
           "this checkout's Python and pymemcg install (the host's root filesystem, shared "
           "read-only) and runs `pymemcg verify --format json` and `tests/test_parity.py` "
           "with `PYMEMCG_REQUIRE_BPF=1`; the host's own kernel runs the same natively. "
           "The aarch64 guests (qemu-system-aarch64, TCG) run Debian's arm64 Python with "
           "pymemcg's aarch64 wheel in a venv instead (`vm/userland.py`): what users "
           "install, no build tools. A mismatch found by verify fails the guest.", "",
           "- served: the stats the backend serves there (`pymemcg.stats()`).",
           "- compared: exact: served stats that `pymemcg verify` compared with the kernel's "
           "own files there (memory.stat, memory.current or usage_in_bytes, memory.events "
           "or oom_control, peak, limit, failcnt, swap and memsw files; every cgroup of its "
           "probe, hierarchical and local, single reads and tree walks) and found equal in "
           "every comparison (in brackets: how many of them with a value other than 0 "
           "somewhere in the probe); mismatched: those that differed.",
           "- served, not compared: served by BPF, but no kernel file prints them there "
           "(cgroup v1's memory.stat prints about 20 keys), so nothing could check them: "
           "not counted as exact. The reason for each is below.",
           "- text: the stats the text backend returned for a fresh cgroup there (the "
           "kernel's own files, the reference).",
           "- unavailable: reported as unavailable by that backend (`None`, never a made-up 0).",
           "- slot source: where the slots of the state[]/events[] arrays came from: `kernel "
           "lists` (the kernel's own item lists, read from its memory through kallsyms), "
           "`table R` (pymemcg's table of release R, accepted because it matches this "
           "kernel's BTF), `enum` (state[] indexed by enum value: the slot is the enumerator, "
           "no table needed), `kfunc` (the memcg kfuncs, asked by enum value: no slot); "
           "`local:` says where local values came from when it differs.",
           "- Both slot sources: where the kernel lists its items in kallsyms, the guest "
           "runs `pymemcg verify` twice, as it is and with `PYMEMCG_KALLSYMS=0` (tables and "
           "enum alone); each run must be exact against the kernel's files. The two agree "
           "when every stat served by both is read from the same array and slot, "
           "hierarchical and local (the same kernel words, so the same values), and both "
           "serve the same stats; where pymemcg has no table for the release, the stats "
           "served only from the kernel's lists are listed instead. A disagreement fails "
           "the guest.",
           "",
           "Pinned kernels: " + "; ".join(f"`{k.package}` {k.version}"
                                          for k in KERNELS.values()) + ".", "",
           summary_table(results), "",
           "## Every served stat, per release", "",
           "Each stat BPF served on some guest of a release (either slot source), and "
           "whether `pymemcg verify` compared it exact with a kernel file on at least one "
           "guest of that release; for the others, verify's reason on each guest.", "",
           coverage_table(results), ""]
    for r in results:
        out += [f"## {r.get('kernel_release') or r['kernel_series']}, {r.get('arch', '?')}, "
                f"cgroup v{r.get('cgroup')}, {r.get('where')}", ""]
        if r.get("kernel_package"):
            out.append(f"- kernel: {r['kernel_package']} ({r.get('arch', '?')})")
        if r.get("userland"):
            out.append(f"- userland: Debian's arm64 packages and the wheel: {r['userland']}; "
                       f"pymemcg imported from `{r.get('pymemcg_file')}`")
        plan = r.get("plan")
        if plan:
            h, loc = plan["hierarchical"], plan["local"]
            out.append(f"- BPF plan from this kernel's BTF: hierarchical values through "
                       f"`{h['backend']}`, local values through `{loc['backend']}`, programs "
                       f"`{h['tree_program']}`/`{h['single_program']}`; flush=True "
                       + ("loads the sleepable `pmc_memcg_iter_flush`/"
                          "`pmc_memcg_iter_path_flush` (iter.s/cgroup)" if plan.get("flush")
                          else "raises FlushUnavailable (no flush kfunc)")
                       + (f"; single reads: {plan['read_method']}" if plan.get("read_method")
                          else ""))
        out.append(f"- result: {'PASS' if r.get('passed') else 'FAIL'}"
                   + (f" ({r['error']})" if r.get("error") else ""))
        v = r.get("verify") or {}
        if v.get("counts"):
            c = v["counts"]
            out.append(f"- `pymemcg verify`: {c['served']} served, {c['exact']} compared and "
                       f"exact ({c.get('exact_nonzero', '?')} of them with a nonzero value), "
                       f"{c['mismatch']} mismatched, {c['not compared']} not compared; "
                       f"{c.get('comparisons', '?')} comparisons in {v.get('duration_s')} s")
        elif v:
            out.append(f"- `pymemcg verify` did not run: {first_line(v.get('error', ''))}")
        vt = r.get("verify_without_kallsyms")
        if vt is not None:
            c = vt.get("counts") or {}
            out.append(f"- with `PYMEMCG_KALLSYMS=0` (slot source {slot_source(r, True)}): "
                       + (f"`pymemcg verify` did not run: {first_line(vt.get('error', ''))}"
                          if vt.get("error") else
                          f"`pymemcg verify` {c.get('served')} served, {c.get('exact')} exact, "
                          f"{c.get('mismatch')} mismatched, {c.get('not compared')} not "
                          f"compared"))
            a = r.get("slot_agreement") or {}
            for level in ("hierarchical", "local"):
                x = a.get(level) or {}
                out.append(f"  - slot sources, {level}: {'agree' if x.get('ok') else 'DISAGREE'}"
                           f" on {x.get('served_by_both')} stats served by both"
                           + "".join(f"; {k.replace('_', ' ')}: {_names(x[k])}"
                                     for k in ("slot_differs", "kernel_lists_only",
                                               "without_kallsyms_only") if x.get(k)))
        elif r.get("slot_sources"):
            out.append("- the kernel lists no item list in kallsyms: one slot source "
                       f"({slot_source(r)})")
        for c in r.get("cases") or []:
            if c["outcome"] != "passed":
                out.append(f"  - {c['outcome']} `{c['test']}`: "
                           f"{first_line(c.get('message', ''))[:300]}")
        stats = r.get("stats") or []
        groups: Dict[str, List[str]] = {}
        for s in stats:
            if s.get("backend") == "bpf":
                how = s["via"].split(":")[0]
                groups.setdefault(f"bpf ({how})", []).append(s["name"])
        groups.update(verify_groups(r))
        text = _text_served(r)
        if text is not None:
            groups["text (fresh cgroup)"] = text
        groups["unavailable through bpf"] = [s["name"] for s in stats
                                             if s.get("backend") != "bpf"]
        claimed = [s["name"] for s in stats if s.get("backend") == "text"]
        if text is not None and set(claimed) - set(text):
            groups["`stats()` says text, but the text backend returned none"] = \
                [n for n in claimed if n not in text]
        for g, names in groups.items():
            out.append(f"- {g}, {len(names)}: {_names(names)}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_report() -> None:
    results = load_results()
    if not results:
        raise MatrixError(f"no results in {RESULTS}: run `make matrix` first")
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render_doc(results))
    log(f"wrote {DOC.relative_to(REPO)}")
