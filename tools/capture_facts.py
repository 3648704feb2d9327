"""Capture a kernel's layout facts (BTF enums, array lengths, kfuncs, and
where readable the kallsyms item lists) as a JSON fixture for the layout
tests, which then run over every kernel captured, not only the one they
happen to run on.

    python tools/capture_facts.py --live OUT.json           # this host's kernel
    python tools/capture_facts.py --image VMLINUZ --release 6.12 OUT.json

An image is a bzImage or arm64 Image.gz/Image as Debian ships it: the
compressed vmlinux inside is found by its magic and unpacked with the
system's decompressors (as the kernel's scripts/extract-vmlinux does); its
.BTF section is read through the shim (libbpf's btf__parse).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from pymemcg.kernel_probe import facts_to_json, kernel_facts, read_btf_facts, release_of

# magic -> decompressor that reads stdin (trailing garbage is tolerated)
COMPRESSORS = [(b"\x28\xb5\x2f\xfd", ["zstd", "-dcq"]), (b"\xfd7zXZ\x00", ["xz", "-dcq"]),
               (b"\x1f\x8b\x08", ["gzip", "-dcq"]), (b"\x02\x21\x4c\x18", ["lz4", "-dcq"])]


def extract_vmlinux(image: str, out: str) -> None:
    """Write the ELF vmlinux inside a compressed kernel image to out."""
    data = open(image, "rb").read()
    if data[:4] == b"\x7fELF":
        open(out, "wb").write(data)
        return
    for magic, cmd in COMPRESSORS:
        start = 0
        while (at := data.find(magic, start)) >= 0:
            start = at + 1
            p = subprocess.run(cmd, input=data[at:], capture_output=True)
            if p.stdout[:4] == b"\x7fELF":
                open(out, "wb").write(p.stdout)
                return
    raise SystemExit(f"{image}: no compressed ELF vmlinux found inside")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--live", action="store_true", help="the running kernel (kallsyms too)")
    src.add_argument("--image", help="a kernel image (vmlinuz)")
    ap.add_argument("--release", help="its release, e.g. 6.12 (with --image)")
    ap.add_argument("--note", default="", help="where the image came from")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    if args.live:
        facts = kernel_facts()
        note = args.note or f"live: {os.uname().release} ({os.uname().machine})"
    else:
        if not args.release:
            ap.error("--image needs --release")
        with tempfile.TemporaryDirectory() as tmp:
            vmlinux = os.path.join(tmp, "vmlinux")
            extract_vmlinux(args.image, vmlinux)
            facts = read_btf_facts(release_of(args.release), vmlinux)
        note = args.note or os.path.basename(args.image)
    doc = facts_to_json(facts)
    doc["captured_from"] = note
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{args.out}: {facts.release}, state[{facts.state_len}], events[{facts.events_len}], "
          f"kallsyms {'yes' if facts.kallsyms_state or facts.kallsyms_events else 'no'}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
