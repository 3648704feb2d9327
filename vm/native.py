"""The matrix's run on this host's own kernel: vm/guest_run.py (verify and
the parity tests) under the given Python, without a guest."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time

from results import judge_native
from workspace import BUILD, REPO


def run_native(python: str, timeout: float) -> dict:
    outdir = BUILD / "out" / "native"
    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    rel = platform.release()
    series = ".".join(rel.split(".")[:2])
    res: dict = {"kernel_series": series, "arch": platform.machine(), "kernel_package": "this host's kernel",
                 "where": "native (this host)"}
    env = dict(os.environ, PYMEMCG_REQUIRE_BPF="1", PYTHONDONTWRITEBYTECODE="1")
    t0 = time.monotonic()
    logf = outdir / "output.log"
    with open(logf, "wb") as f:
        p = subprocess.run([python, str(REPO / "vm" / "guest_run.py"), "--repo", str(REPO),
                            "--out", str(outdir / "result.json"), "--where", "native",
                            "--timeout", str(int(timeout))], stdout=f, stderr=subprocess.STDOUT,
                           env=env, cwd=REPO)
    res["wall_s"] = round(time.monotonic() - t0, 1)
    res["status"] = f"exited rc={p.returncode}"
    judge_native(res, logf, outdir / "result.json")
    res["where"] = "native (this host)"
    if not res.get("cgroup_version"):
        with open("/proc/self/mountinfo") as f:
            v1 = any(" - cgroup " in line and "memory" in line.split()[-1].split(",")
                     for line in f)
        res["cgroup_version"] = 1 if v1 else 2
    res["cgroup"] = res["cgroup_version"]
    res["guest"] = f"{series}-v{res['cgroup']}"
    res["console_log"] = str(logf.relative_to(REPO))
    return res
