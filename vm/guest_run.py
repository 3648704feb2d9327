"""Run `pymemcg verify` and the parity tests here and write one result file (JSON).

vm/matrix.py runs this inside each qemu guest (chrooted into the host's root
filesystem, shared read-only, so the Python and the pymemcg install are the
host's own) and natively on the host. Only the standard library is used
here; pymemcg and pytest run in subprocesses, exactly as a user runs them:

    python -c 'import pymemcg, json; print(json.dumps([s.__dict__ for s in pymemcg.stats()]))'
    python -m pymemcg verify --format json       (every served stat against the kernel's files)
    python -m pytest tests/test_parity.py        (with PYMEMCG_REQUIRE_BPF=1)

The result file holds the kernel release, the cgroup version, the stats list
(what is available and how each stat is served), verify's outcome per stat
(exact, mismatch, not compared, and why), the test outcome counts, each
failing test's message, and pass/fail: a mismatch, or a verify that did not
run, fails the guest as a failing test does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

# One interpreter start (each costs seconds under TCG) collects what
#   python -c 'import pymemcg, json; print(json.dumps([s.__dict__ for s in pymemcg.stats()]))'
# prints, plus, for the matrix's text-backend row, which stats memory.stat and
# friends carry here (pymemcg's own rule; best effort).
INFO_CMD = """
import json, pymemcg
out = {"stats": [s.__dict__ for s in pymemcg.stats()],
       "pymemcg_file": pymemcg.__file__, "pymemcg_version": pymemcg.__version__}
try:
    from pymemcg.cgroupfs import memory_mount
    from pymemcg.memory_stat import text_availability
    m = memory_mount()
    out["cgroup_version"] = m.version
    out["memory_mount"] = m.mountpoint
    out["text_available"] = {s["name"]: text_availability(s["name"], m.version, False)[0]
                             for s in out["stats"]}
except Exception as e:
    out["text_available_error"] = repr(e)
# which backend, programs and .rodata flags the loader picks from this BTF
try:
    import dataclasses
    from pymemcg import slots
    from pymemcg.kernel_probe import kernel_facts
    facts = kernel_facts()
    out["plan"] = {"hierarchical": dataclasses.asdict(slots.plan(facts)),
                   "local": dataclasses.asdict(slots.plan(facts, local=True)),
                   "flush": slots.kfunc_family(facts) != slots.KFUNCS_NONE}
    with pymemcg.Reader(stats=["usage"], backend="bpf") as r:
        out["plan"]["read_method"] = r.read_method
except Exception as e:
    out["plan_error"] = repr(e)
# what the text backend really returns for a fresh child cgroup here (which
# keys this kernel's memory.stat, counter and event files have)
try:
    import os
    from pymemcg.cgroupfs import own_memory_cgroup
    from pymemcg.backends.text import TextBackend
    child = os.path.join(own_memory_cgroup(), "pymemcg-matrix-%d" % os.getpid())
    os.mkdir(child)
    try:
        vals = TextBackend([s["name"] for s in out["stats"]], False, m.version).values(child)
        out["text_served"] = sorted(vals)
    finally:
        os.rmdir(child)
except Exception as e:
    out["text_served_error"] = repr(e)
# what stats() says with the kernel's lists switched off (the facts are cached
# per setting of the switch, so they are read anew)
try:
    import os
    os.environ["PYMEMCG_KALLSYMS"] = "0"
    out["stats_without_kallsyms"] = [s.__dict__ for s in pymemcg.stats()]
except Exception as e:
    out["stats_without_kallsyms_error"] = repr(e)
finally:
    os.environ.pop("PYMEMCG_KALLSYMS", None)
# both slot sources, resolved here for the CO-RE arrays (hierarchical and
# local): the kernel's own lists (kallsyms) and the built-in tables or the
# enum alone (what PYMEMCG_KALLSYMS=0 gives)
try:
    import os, resource
    from pymemcg.kernel_probe import read_btf_facts, release_of, with_kernel_lists
    from pymemcg.release_tables import TABLES
    btf = read_btf_facts(release_of(os.uname().release))
    lists = with_kernel_lists(btf)
    names = [s["name"] for s in out["stats"]]
    def resolved(facts):
        return {level: {r.stat.name: [r.via, r.kind, r.slot, r.detail]
                        for r in slots.resolve(names, facts, m.version, resource.getpagesize(),
                                                local=level == "local",
                                                backend=slots.BACKEND_CORE)}
                for level in ("hierarchical", "local")}
    out["slot_sources"] = {
        "kernel_lists": lists.kallsyms_state is not None or lists.kallsyms_events is not None,
        "table": btf.release in TABLES,
        "with_kallsyms": resolved(lists), "without_kallsyms": resolved(btf)}
except Exception as e:
    out["slot_sources_error"] = repr(e)
print(json.dumps(out))
"""

# the churn tests: a Reader holds no removed cgroup (on v2 also judged by
# cgroup.stat's nr_dying_descendants, which the v1 host has not); of the OOM
# events' tests, the kill in a removed cgroup (the rest, CLI and exporters,
# cost a minute or more each under TCG and run on the host); top's pressure
# column against a real stall, which only a v2 guest can make (a v1 one skips it);
# examples/oomd.py under real pressure (v2; on v1 it must refuse)
TESTS = ["tests/test_parity.py", "tests/test_startup.py", "tests/test_pressure.py",
         "tests/test_numa.py::test_numa_matches_memory_numa_stat",
         "tests/test_churn.py::test_removed_cgroups_are_not_held",
         "tests/test_churn.py::test_links_of_removed_cgroups_are_closed",
         "tests/test_oom_events.py::test_event_layout_matches_the_compiled_struct",
         "tests/test_oom_events.py::"
         "test_kill_in_a_cgroup_removed_right_after_is_reported_once_with_its_path",
         "tests/test_top.py::test_pressure_column_shows_a_stall",
         "tests/test_oomd.py::test_refuses_cgroup_v1",
         "tests/test_oomd.py::test_acts_under_real_pressure"]


def run_json(py: str, code: str, env: dict, cwd: str) -> tuple:
    """(parsed JSON or None, error text)"""
    try:
        p = subprocess.run([py, "-c", code], capture_output=True, text=True, env=env, cwd=cwd,
                           timeout=300)
    except subprocess.TimeoutExpired:
        return None, "timed out after 300 s"
    if p.returncode != 0:
        return None, (p.stderr or p.stdout).strip()[-2000:]
    try:
        return json.loads(p.stdout.strip().splitlines()[-1]), ""
    except (ValueError, IndexError) as e:
        return None, f"unparsable output ({e}): {p.stdout[-500:]!r} {p.stderr[-500:]!r}"


def run_verify(py: str, env: dict, cwd: str, timeout: float = 300) -> dict:
    """`pymemcg verify --format json`: its exit status, time and result
    (without the per-check details); "error" when it did not run."""
    cmd = [py, "-m", "pymemcg", "verify", "--format", "json"]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"cmd": cmd, "rc": None, "error": f"timed out after {timeout:.0f} s"}
    out = {"cmd": cmd, "rc": p.returncode, "wall_s": round(time.monotonic() - t0, 1)}
    try:
        doc = json.loads(p.stdout)
    except ValueError:
        out["error"] = (p.stderr or p.stdout).strip()[-2000:] or f"exit status {p.returncode}"
        return out
    for s in doc.get("stats", []):
        s.pop("checks", None)
    out.update(doc)
    return out


def slot_agreement(sources: dict) -> dict:
    """Whether the two slot sources agree, per level (hierarchical, local):
    every stat served by both is read from the same array and slot (so from
    the same kernel words: equal values by construction), and both serve the
    same stats; where the release has no built-in table, the stats served
    only from the kernel's lists are listed, not a disagreement."""
    out: dict = {"ok": True}
    for level in ("hierarchical", "local"):
        k = sources["with_kallsyms"][level]
        t = sources["without_kallsyms"][level]
        served_k = {n for n, v in k.items() if v[0] != "unavailable"}
        served_t = {n for n, v in t.items() if v[0] != "unavailable"}
        both = sorted(served_k & served_t)
        differ = [f"{n}: kernel lists {k[n][1]}/{k[n][2]}, {t[n][0]} {t[n][1]}/{t[n][2]}"
                  for n in both if k[n][1:3] != t[n][1:3]]
        lists_only = sorted(served_k - served_t)
        tables_only = sorted(served_t - served_k)
        ok = not differ and not tables_only and (not lists_only or not sources["table"])
        out[level] = {"served_by_both": len(both), "slot_differs": differ,
                      "kernel_lists_only": lists_only, "without_kallsyms_only": tables_only,
                      "ok": ok}
        out["ok"] &= ok
    return out


def run_pytest(py: str, repo: str, cwd: str, env: dict, timeout: float, junit: str) -> dict:
    """Runs pytest on the checkout's TESTS from `cwd`, echoing its output;
    returns rc, output tail, duration."""
    cmd = [py, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs", "--tb=short",
           "-o", "junit_family=xunit2", f"--junitxml={junit}", f"--rootdir={repo}",
           *(os.path.join(repo, t) for t in TESTS)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    lines: list = []

    def pump():
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    timed_out = False
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        rc = proc.wait()
    t.join(10)
    return {"cmd": cmd, "rc": rc, "timed_out": timed_out,
            "duration_s": round(time.monotonic() - t0, 1), "output_tail": "".join(lines[-200:])}


def verify_and_say(py: str, env: dict, cwd: str, label: str) -> dict:
    """run_verify, with its outcome on the console."""
    v = run_verify(py, env, cwd)
    if v.get("error"):
        print(f"MATRIX: pymemcg verify{label} did not run: {v['error']}", flush=True)
    else:
        print(f"MATRIX: pymemcg verify{label}: rc {v['rc']}, {json.dumps(v.get('counts'))}, "
              f"{v.get('duration_s')} s", flush=True)
        for s in v.get("stats", []):
            if s["outcome"] == "mismatch":
                print(f"MATRIX: verify{label} mismatch {s['name']}: {s['why']}", flush=True)
    return v


def verify_passed(v: dict) -> bool:
    return v.get("rc") == 0 and not v.get("error") and v.get("ok") is True


def parse_junit(path: str) -> tuple:
    """(counts, [per-test outcome]) from a pytest junit xml file."""
    counts = {"total": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    cases = []
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None, []
    for tc in root.iter("testcase"):
        name = f"{tc.get('classname', '')}::{tc.get('name', '')}"
        outcome, message, text = "passed", "", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "errors", "skipped": "skipped"}[tag]
                message = el.get("message", "") or ""
                text = (el.text or "")
                break
        counts["total"] += 1
        counts[outcome] += 1
        entry = {"test": name, "outcome": outcome, "time_s": round(float(tc.get("time", 0)), 2)}
        if outcome != "passed":
            entry["message"] = message[:4000]
            entry["detail"] = text[-4000:]
        cases.append(entry)
    return counts, cases


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", required=True, help="the checkout whose tests run")
    ap.add_argument("--out", required=True, help="result file to write")
    ap.add_argument("--where", default="native", help="free text: where this runs")
    ap.add_argument("--timeout", type=float, default=900, help="pytest time limit, seconds")
    ap.add_argument("--installed", action="store_true",
                    help="test the installed pymemcg (a wheel), not the checkout's: "
                         "everything runs from a scratch directory")
    args = ap.parse_args()

    py = sys.executable
    env = dict(os.environ)
    env.setdefault("PYMEMCG_REQUIRE_BPF", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # the parity tests need no plugins; loading every installed one (hypothesis,
    # pytest-benchmark, ...) costs tens of seconds under TCG
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    tmp = tempfile.mkdtemp(prefix="pymemcg-matrix-")
    env.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tmp, "hypothesis"))
    # the checkout's directory would put its pymemcg/ first on sys.path
    cwd = tmp if args.installed else args.repo

    t0 = time.monotonic()
    result = {
        "schema": 2,
        "where": args.where,
        "kernel_release": platform.release(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "python_executable": py,
        "installed": args.installed,
        "require_bpf": env["PYMEMCG_REQUIRE_BPF"],
        "tests": TESTS,
    }
    print(f"MATRIX: kernel {result['kernel_release']}, python {py}", flush=True)

    info, err = run_json(py, INFO_CMD, env, cwd)
    result.update(info or {})
    stats = result.setdefault("stats", None)
    if err:
        result["stats_error"] = err
        print(f"MATRIX: pymemcg.stats() failed: {err}", flush=True)
    else:
        n_bpf = sum(1 for s in stats if s.get("backend") == "bpf")
        print(f"MATRIX: pymemcg.stats(): {len(stats)} stats, {n_bpf} through BPF", flush=True)

    result["verify"] = v = verify_and_say(py, env, cwd, "")
    verify_ok = verify_passed(v)
    # the second slot source: the built-in tables or the enum alone
    sources = result.get("slot_sources")
    if sources and sources["kernel_lists"]:
        env_tables = dict(env, PYMEMCG_KALLSYMS="0")
        err_t = result.get("stats_without_kallsyms_error")
        result["verify_without_kallsyms"] = vt = verify_and_say(py, env_tables, cwd,
                                                               " (PYMEMCG_KALLSYMS=0)")
        result["slot_agreement"] = agree = slot_agreement(sources)
        print(f"MATRIX: slot sources agree: {agree['ok']} "
              f"{json.dumps({k: v for k, v in agree.items() if k != 'ok'})}", flush=True)
        verify_ok = verify_ok and verify_passed(vt) and agree["ok"] and not err_t
    elif not sources:
        print(f"MATRIX: slot sources not resolved: {result.get('slot_sources_error')}",
              flush=True)
        verify_ok = False

    junit = os.path.join(tmp, "junit.xml")
    result["pytest"] = run_pytest(py, args.repo, cwd, env, args.timeout, junit)
    counts, cases = parse_junit(junit)
    shutil.rmtree(tmp, ignore_errors=True)
    result["counts"] = counts
    result["cases"] = cases
    ok = (result["pytest"]["rc"] == 0 and not result["pytest"]["timed_out"] and counts is not None
          and counts["total"] > 0 and counts["failed"] == 0 and counts["errors"] == 0
          and stats is not None and verify_ok)
    result["passed"] = ok
    result["duration_s"] = round(time.monotonic() - t0, 1)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(args.out + ".tmp", args.out)
    print(f"MATRIX: RESULT {'PASS' if ok else 'FAIL'} {json.dumps(counts)} verify "
          f"{json.dumps(v.get('counts') or v.get('error'))}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
