"""The README and docs/ as a reader meets them: the README's examples run
here, its figures are those of the generated pages, its set-up commands are
the ones CI runs, and every relative link leads somewhere.

The Python examples and the `pymemcg` commands run as a user runs them, in
subprocesses, on this host's memory cgroups. Under PYMEMCG_REQUIRE_BPF=1 a
fallback to memory.stat text is an error, as in every BPF test.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
REQUIRE_BPF = os.environ.get("PYMEMCG_REQUIRE_BPF", "") not in ("", "0")

#: the README's two set-up commands, as the project's brief requires them
SETUP = (("Build and take a snapshot of this host's memory cgroups through BPF:",
          "make deps snapshot"),
         ("Build and run the tests (real kernel, real cgroups):", "make deps test"))

#: commands that run until stopped (q, Ctrl-C, SIGTERM), by subcommand
RUN_UNTIL_STOPPED = {"top", "watch", "export"}
#: seconds a command may take to finish, or to print its first line
COMMAND_TIMEOUT = 120.0


def readme() -> str:
    return README.read_text(encoding="utf-8")


def fenced_blocks(text: str, lang: str) -> List[str]:
    """The bodies of the ```lang blocks of a Markdown text, in order."""
    return re.findall(r"^```" + re.escape(lang) + r"[ \t]*\n(.*?)^```[ \t]*$", text,
                      flags=re.M | re.S)


# ---- the examples run ---------------------------------------------------------

def python_examples() -> List[str]:
    return fenced_blocks(readme(), "python")


def test_the_readme_has_examples_of_each_kind():
    """The quick start shows the API, the CLI, Prometheus and OpenTelemetry."""
    code = "\n".join(python_examples())
    assert "pymemcg.Reader(" in code
    assert "pymemcg.prometheus" in code and "pymemcg.otel" in code
    subcommands = {shlex.split(c)[1] for c in readme_commands()}
    assert {"snapshot", "export", "doctor", "verify"} <= subcommands, subcommands


def example_env() -> Dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.mark.parametrize("index", range(len(python_examples())))
def test_python_example_runs(index: int, tmp_path: Path) -> None:
    code = python_examples()[index]
    if REQUIRE_BPF:
        # a fallback to memory.stat text would pass the example unnoticed
        code = ("import warnings, pymemcg\n"
                "warnings.simplefilter('error', pymemcg.FallbackWarning)\n") + code
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=example_env(),
                       capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    assert p.returncode == 0, f"README example {index + 1} failed:\n{code}\n{p.stderr}"
    assert p.stdout.strip(), f"README example {index + 1} printed nothing:\n{code}"


def readme_commands() -> List[str]:
    """Every `pymemcg ...` line of the README's ```sh blocks, comments cut off."""
    out = []
    for block in fenced_blocks(readme(), "sh"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("pymemcg "):
                out.append(line)
    return out


def pymemcg_command(line: str) -> List[str]:
    argv = shlex.split(line)
    script = shutil.which("pymemcg", path=str(Path(sys.executable).parent))
    return ([script] if script else [sys.executable, "-m", "pymemcg"]) + argv[1:]


def first_line(stream, deadline: float) -> str:
    """The first line a child writes on stream, waiting until deadline."""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.5)
        if ready:
            return stream.readline()
    return ""


def drain(stream) -> threading.Thread:
    """Read stream to its end in a thread, as a consumer does: a command that
    writes more than a pipe holds must not wait on this test to stop."""
    thread = threading.Thread(target=lambda: stream.read(), daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_runs(line: str, tmp_path: Path) -> None:
    argv = pymemcg_command(line)
    sub = shlex.split(line)[1]
    if sub not in RUN_UNTIL_STOPPED:
        p = subprocess.run(argv, cwd=tmp_path, env=example_env(), capture_output=True,
                           text=True, timeout=COMMAND_TIMEOUT)
        assert p.returncode == 0, f"`{line}` exited {p.returncode}:\n{p.stderr}"
        assert p.stdout.strip(), f"`{line}` printed nothing"
        if REQUIRE_BPF:
            assert "FallbackWarning" not in p.stderr, p.stderr
        return
    if sub == "export":
        # the README's port may be taken on a shared host: any free one
        argv = [re.sub(r":\d+$", ":0", a) if re.fullmatch(r"[\d.]+:\d+", a) else a
                for a in argv]
    p = subprocess.Popen(argv, cwd=tmp_path, env=example_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT
        if sub == "export":
            said = first_line(p.stderr, deadline)
            url = re.search(r"http://\S+/metrics", said)
            assert url, f"`{line}` said no URL: {said!r}"
            with urllib.request.urlopen(url.group(0), timeout=30) as page:
                body = page.read().decode()
            assert "container_memory_usage_bytes" in body, body[:2000]
            if REQUIRE_BPF:
                assert 'backend="bpf"' in body, body[-2000:]
        else:
            assert first_line(p.stdout, deadline).strip(), f"`{line}` printed nothing"
        drains = [drain(p.stdout), drain(p.stderr)]
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        for thread in drains:
            thread.join(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
    assert p.returncode == 0, f"`{line}` exited {p.returncode} on SIGTERM"


# ---- the set-up commands ----------------------------------------------------

def test_setup_commands_are_in_the_readme():
    text = readme()
    for say, command in SETUP:
        assert f"{say}\n\n    {command}\n" in text, f"README lost its set-up command {command!r}"


def makefile_targets() -> Set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_-]+)\s*:(?!=)", text, flags=re.M))


def test_setup_commands_name_makefile_targets():
    targets = makefile_targets()
    for _, command in SETUP:
        missing = [t for t in command.split()[1:] if t not in targets]
        assert not missing, f"`{command}`: no Makefile target {missing}"


def test_ci_runs_the_readme_test_command():
    """.ci/run runs the README's test command, target by target, in order."""
    lines = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    test_command = SETUP[1][1]
    at = 0
    for target in test_command.split()[1:]:
        found = [i for i, ln in enumerate(lines) if i >= at and ln == f"make {target}"]
        assert found, f".ci/run does not run `make {target}` (of `{test_command}`) in order"
        at = found[0] + 1


# ---- the results table -----------------------------------------------------------

UNIT_SECONDS = {"ns": 1e-9, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
FIGURE = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s?(ns|µs|ms|s|×|%)(?![\w])")


def results_rows() -> List[List[str]]:
    text = readme()
    section = text[text.index("\n## Results"):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    rows = [ln for ln in section.splitlines() if ln.startswith("|")]
    assert len(rows) > 2, "README's Results section has no table"
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in rows[2:]]


def figures(text: str) -> List[Tuple[float, str, int]]:
    """(value, unit, decimals) of every figure with a unit in text; "a / b unit"
    and "a-b unit" give two figures of that unit."""
    text = re.sub(r"(\d[\d,.]*)\s*(?:/|-)\s*(?=\d[\d,.]*\s?(ns|µs|ms|s|×|%))",
                  lambda m: f"{m.group(1)}{m.group(2)} ", text)
    out = []
    for number, unit in FIGURE.findall(text):
        decimals = len(number.split(".")[1]) if "." in number else 0
        out.append((float(number.replace(",", "")), unit, decimals))
    return out


def kind(unit: str) -> str:
    return "time" if unit in UNIT_SECONDS else unit


def bench_figures() -> Dict[str, List[float]]:
    """Every figure of docs/bench.md by kind, times in seconds; a bare number in
    a table that the paragraph before it says is in ns (or microseconds) per
    cgroup counts as such."""
    out: Dict[str, List[float]] = {}
    bare = 0.0   # seconds per bare number of the tables below this paragraph
    for line in (DOCS / "bench.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("|") and line.strip():
            bare = (1e-9 if line.rstrip().endswith("ns per cgroup.") else
                    1e-6 if re.search(r"microseconds per cgroup", line, flags=re.I) else 0.0)
        # some tables write a ratio as 8.6x, the README as 8.6×
        for value, unit, _ in figures(re.sub(r"(\d)x\b", "\\1×", line)):
            out.setdefault(kind(unit), []).append(value * UNIT_SECONDS.get(unit, 1.0))
        if bare and line.startswith("|"):
            for cell in line.strip("|").split("|"):
                if re.fullmatch(r"\s*\d[\d,]*(\.\d+)?\s*", cell):
                    out.setdefault("time", []).append(float(cell.replace(",", "")) * bare)
    return out


def is_bench_figure(value: float, unit: str, decimals: int,
                    source: Dict[str, List[float]]) -> bool:
    """Whether a figure, as rounded to its decimals, is one of source's."""
    scale = UNIT_SECONDS.get(unit, 1.0)
    half = 0.5 * 10 ** -decimals * (1 + 1e-9)
    return any(abs(s / scale - value) <= half for s in source.get(kind(unit), []))


def test_results_figures_are_the_benchmarks():
    """Each figure of the README's benchmark rows is one of docs/bench.md's
    (written by `make bench`), as rounded in the README."""
    source = bench_figures()
    rows = [r for r in results_rows() if not r[0].startswith("kernel matrix")]
    assert len(rows) >= 5
    for row in rows:
        for value, unit, decimals in figures(" | ".join(row[1:])):
            assert is_bench_figure(value, unit, decimals, source), \
                f"README's {value}{unit} ({row[0]}) is not a figure of docs/bench.md"


def test_results_say_which_run():
    """The run the README's table comes from is the one docs/bench.md describes:
    its date, kernel and Python."""
    text = readme()
    intro = text[text.index("\n## Results"):]
    intro = intro[:intro.index("\n|")]
    bench = (DOCS / "bench.md").read_text(encoding="utf-8")
    run = re.search(r"^- run: (\d{4}-\d\d-\d\d) ", bench, flags=re.M)
    kernel = re.search(r"^- kernel: (\d+\.\d+\.\d+)", bench, flags=re.M)
    python = re.search(r"^- Python (\S+) ", bench, flags=re.M)
    assert run and kernel and python, "docs/bench.md lost its environment lines"
    for fact in (run.group(1), f"kernel {kernel.group(1)}", f"Python {python.group(1)}"):
        assert fact in intro, f"README's Results do not say {fact!r}, as docs/bench.md does"


def test_why_times_are_the_seeds():
    """The README's "Why" quotes the seed's times, which docs/bench.md carries."""
    text = readme()
    why = text[text.index("\n## Why"):text.index("\n## ", text.index("\n## Why") + 1)]
    times = [f for f in figures(why) if f[1] in UNIT_SECONDS]
    assert times
    source = bench_figures()
    for value, unit, decimals in times:
        assert is_bench_figure(value, unit, decimals, source), f"{value} {unit}"


def matrix_summary() -> List[Dict[str, str]]:
    """The summary table of docs/matrix.md (written by `make matrix`)."""
    lines = [ln for ln in (DOCS / "matrix.md").read_text(encoding="utf-8").splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| kernel | arch |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))))
    return rows


def test_results_matrix_row_is_the_matrix():
    rows = matrix_summary()
    runs = [r for r in rows if ": PASS," in r["tested here"]]
    tested = [r for r in rows if r["backend"] != "text"]
    exact = [int(r["compared: exact"].split()[0]) for r in runs]
    claim = " | ".join(next(r for r in results_rows() if r[0].startswith("kernel matrix")))
    assert not any("FAIL" in r["tested here"] for r in rows)
    assert all(r["mismatched"] == "0" for r in tested), tested
    assert f"{len({r['kernel'] for r in runs})} kernels" in claim, claim
    assert f"{len(runs)} runs, all PASS" in claim, claim
    assert f"{min(exact)} to {max(exact)} stats compared per run, all exact" in claim, claim
    assert "0 mismatched" in claim


def test_kernels_page_figures_are_the_matrix():
    """docs/kernels.md quotes this host's verify counts and the kallsyms-off
    runs of 6.16 and 7.0: they must be the matrix's."""
    rows = matrix_summary()
    text = (DOCS / "kernels.md").read_text(encoding="utf-8")
    native = next(r for r in rows if "native" in r["tested here"] and r["backend"] != "text")
    served = native["served"].split()[0]
    exact = native["compared: exact"].split()[0]
    assert (f"{exact} of the {served} served stats are\ncompared, all exact, "
            f"{native['served, not compared']} not compared") in text
    off = {r["kernel"].split(".")[0] + "." + r["kernel"].split(".")[1]:
           r["compared: exact"].split()[0]
           for r in rows if r["slot source"].startswith("PYMEMCG_KALLSYMS=0")}
    assert f"{off['6.16']} and {off['7.0']} exact" in text, off


# ---- links -----------------------------------------------------------------------

def markdown_files() -> List[Path]:
    return [README] + sorted(DOCS.glob("*.md"))


def test_every_page_of_docs_is_linked_from_the_readme():
    """The README is the front door: each page of docs/ is one link away."""
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in links(README)}
    for page in sorted(DOCS.glob("*.md")):
        assert page.resolve() in linked, f"README links no {page.relative_to(REPO)}"


def without_code_blocks(text: str) -> str:
    """text without its fenced and indented code blocks."""
    text = re.sub(r"^```.*?^```[ \t]*$", "", text, flags=re.M | re.S)
    return re.sub(r"(?:^|\n\n)(?: {4}.*(?:\n|$))+", "\n\n", text)


def prose(text: str) -> str:
    """text without code blocks and inline code."""
    return re.sub(r"`[^`\n]*`", "", without_code_blocks(text))


def links(path: Path) -> Iterator[str]:
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(path.read_text(encoding="utf-8"))):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):
            yield target


def anchors(path: Path) -> Set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    seen: Dict[str, int] = {}
    out = set()
    text = without_code_blocks(path.read_text(encoding="utf-8"))
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, flags=re.M):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link's text only
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_link(path: Path, target: str, root: Path = REPO) -> Optional[str]:
    """Why a relative link of path (a file under root) leads nowhere, or None."""
    file, _, anchor = target.partition("#")
    dest = (path.parent / file).resolve() if file else path
    if not dest.exists():
        return f"{path.relative_to(root)}: {target}: no such file"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"{path.relative_to(root)}: {target}: no heading #{anchor} in {dest.name}"
    return None


def test_every_relative_link_resolves():
    broken = [b for p in markdown_files() for t in links(p) if (b := broken_link(p, t))]
    assert not broken, "\n".join(broken)
    assert sum(1 for _ in links(README)) >= 10


def test_the_link_check_sees_a_broken_link(tmp_path: Path) -> None:
    """The check above would notice a missing file and a missing heading."""
    (tmp_path / "a.md").write_text("# Title\n\n## A section\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#a-section) [gone](c.md) [no heading](a.md#nothing)\n"
                    "`[code](x.md)`\n\n    [indented](y.md)\n")
    assert list(links(page)) == ["a.md#a-section", "c.md", "a.md#nothing"]
    assert [broken_link(page, t, tmp_path) is None for t in links(page)] == [True, False, False]
