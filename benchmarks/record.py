"""Appending a benchmark's figures to its result file in ``benchmarks/results/``.

The documentation's Measured page renders those files (``docs/hooks.py``), so a figure is typed nowhere: each
row holds the figure with the command that measured it, the machine, the date and the commit checked out.
``MEDSEG_MACHINE`` names the machine in words where the one found here says too little.
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
META = ["command", "machine", "date", "commit"]


def machine(accelerator: str | None = None) -> str:
    """The CPU model, cores, memory and GPU (``accelerator``; none: 'no GPU'), or ``$MEDSEG_MACHINE``."""
    if os.environ.get("MEDSEG_MACHINE"):
        return os.environ["MEDSEG_MACHINE"]
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    try:
        memory = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1e9:.0f} GB"
    except (ValueError, OSError, AttributeError):
        memory = ""
    return f"{model}, {os.cpu_count()} CPU cores{memory}, {accelerator or 'no GPU'}"


def commit() -> str:
    """The commit checked out (short), with '-dirty' when the working tree differs from it; '' outside git."""
    from pipeline.provenance import git_commit

    head, dirty = git_commit(Path(__file__).resolve().parents[1])
    return f"{head[:7]}{'-dirty' if dirty else ''}" if head else ""


def command() -> str:
    """This process's command line, as typed (less stderr redirections, which the shell kept)."""
    return shlex.join(["python", *sys.argv])


def append(name: str, rows: list[dict], accelerator: str | None = None, path: Path | None = None) -> Path:
    """Append ``rows`` to ``results/<name>`` (or ``path``), each with the command, machine, date and commit.

    A new file gets the rows' columns and then META; an existing file keeps its own header, and a row's column that
    the header lacks is an error (a changed script must not write figures under the wrong heading)."""
    path = path or RESULTS / name
    measured = {"command": command(), "machine": machine(accelerator), "date": datetime.date.today().isoformat(),
                "commit": commit()}  # fmt: skip
    if path.is_file() and path.stat().st_size:
        with path.open(newline="") as handle:
            header = next(csv.reader(handle))
    else:
        header = [*dict.fromkeys(key for row in rows for key in row), *META]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerow(header)
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, header, restval="", extrasaction="raise", lineterminator="\n")
        writer.writerows({**row, **measured} for row in rows)
    print(f"appended {len(rows)} row(s) to {path}")
    return path
