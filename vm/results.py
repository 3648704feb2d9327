"""Reading what a run left (a guest's console and result.json, or the native
run's output) and deciding PASS/FAIL; keeping the results in
build/vm/results/<guest>.json; printing the verdict of a matrix run.

vm/guest_run.py decides the tests' and verify's own outcome (result.json's
"passed"); here a guest also fails when it did not boot, wrote no result or
an unreadable one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List

from workspace import REPO, RESULTS

TAIL_LINES = 60


def tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no console log)"
    lines = text.replace("\r", "").splitlines()
    return "\n".join(lines[-n:])


def judge_guest(res: dict, console: Path, result_file: Path) -> dict:
    """`res` completed from a guest's console (the "MATRIX:" lines of
    vm/init.sh) and its result.json, with the verdict in "passed"."""
    text = console.read_text(errors="replace") if console.exists() else ""
    for key, pat in (("boot_s", r"MATRIX: BOOTED .* uptime ([\d.]+)"),
                     ("run_start_s", r"MATRIX: RUNNING uptime ([\d.]+)"),
                     ("done_s", r"MATRIX: DONE rc=\d+ uptime ([\d.]+)")):
        m = re.search(pat, text)
        if m:
            res[key] = float(m.group(1))
    m = re.search(r"MATRIX: GUEST-ERROR (.*)", text)
    if m:
        res["guest_error"] = m.group(1).strip()
    if result_file.exists():
        try:
            res.update(json.loads(result_file.read_text()), where=res["where"])
        except ValueError as e:
            res["error"] = f"unreadable result.json: {e}"
            res["passed"] = False
    else:
        why = res.get("guest_error") or (
            "the guest did not boot" if "MATRIX: BOOTED" not in text else
            "the guest booted but wrote no result")
        res["error"] = f"{why} ({res['status']})"
        res["passed"] = False
    if not res.get("passed"):
        res["console_tail"] = tail(console)
    return res


def judge_native(res: dict, output: Path, result_file: Path) -> dict:
    """`res` completed from the native run's result.json (its output log
    when there is none), with the verdict in "passed"."""
    if result_file.exists():
        res.update(json.loads(result_file.read_text()))
    else:
        res["passed"] = False
        res["error"] = "no result"
        res["console_tail"] = tail(output)
    return res


def save(res: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{res['guest']}.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    return path


def sort_key(r: dict):
    return ([int(x) for x in r["kernel_series"].split(".")], r.get("arch") not in (None, "x86_64"),
            -int(r.get("cgroup") or 0), r.get("where", ""))


def load_results() -> List[dict]:
    out = []
    for p in sorted(RESULTS.glob("*.json")):
        out.append(json.loads(p.read_text()))
    return sorted(out, key=sort_key)


def first_line(msg: str) -> str:
    for line in (msg or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def general_reason(why: str) -> str:
    """verify's reason for not comparing a stat, without its stat-specific example."""
    return re.sub(r" \([^()]*\)$", "", why or "no reason given")


def verify_groups(r: dict) -> Dict[str, List[str]]:
    """verify's outcome per stat, grouped: exact, mismatched (with the
    values), and not compared by reason (the reason without its example)."""
    groups: Dict[str, List[str]] = {}
    v = r.get("verify") or {}
    for s in v.get("stats") or []:
        if s["outcome"] == "exact":
            groups.setdefault("verify: compared, exact", []).append(s["name"])
        elif s["outcome"] == "mismatch":
            groups.setdefault("verify: MISMATCH", []).append(
                f"{s['name']} (bpf {s['bpf']}, file {s['file']}: {s['why']})")
        else:
            why = general_reason(s.get("why"))
            groups.setdefault(f"verify: served, not compared ({why})", []).append(s["name"])
    return groups


def summarize(results: List[dict]) -> bool:
    ok_all = True
    print("\n=== kernel matrix ===")
    for r in sorted(results, key=sort_key):
        ok = bool(r.get("passed"))
        ok_all &= ok
        counts = r.get("counts") or {}
        t = (f"boot {r['boot_s']:.1f}s, " if "boot_s" in r else "") + f"wall {r.get('wall_s')}s"
        cstr = ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "no tests ran"
        vc = (r.get("verify") or {}).get("counts")
        cstr += (f"; verify: {vc['exact']} exact, {vc['mismatch']} mismatched, "
                 f"{vc['not compared']} not compared" if vc else "; verify: did not run")
        print(f"{'PASS' if ok else 'FAIL'}  {r['guest']:<8} "
              f"{r.get('kernel_release') or r.get('kernel_package', '?'):<28} "
              f"{r.get('where', ''):<19} {cstr}  ({t})")
        if r.get("error"):
            print(f"      error: {r['error']}")
        for name in verify_groups(r).get("verify: MISMATCH", []):
            print(f"      verify mismatch: {name}")
        if (r.get("verify") or {}).get("error"):
            print(f"      verify did not run: {first_line(r['verify']['error'])[:400]}")
        for c in r.get("cases") or []:
            if c["outcome"] in ("failed", "errors"):
                print(f"      {c['outcome']} {c['test']}: {first_line(c.get('message'))[:400]}")
    for r in results:
        if r.get("console_tail") and (r.get("error") or not r.get("cases")):
            print(f"\n--- {r['guest']}: last {TAIL_LINES} lines of {r.get('console_log')} ---")
            print(r["console_tail"])
    print(f"\nconsole logs: build/vm/run/<guest>/console.log; results: "
          f"{RESULTS.relative_to(REPO)}/*.json")
    print(f"matrix: {'PASS' if ok_all else 'FAIL'}")
    return ok_all
