"""Shared by the benchmarks: the result table and the machine description."""
import argparse
import os
import platform
import re
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%d cores, %s, Python %s" % (os.cpu_count() or 0, cpu, platform.python_version())


def fmt(value):
    if value is None:
        return "—"
    if isinstance(value, float):
        return "%.3g" % value if abs(value) < 1000 else "{:,.0f}".format(value)
    return str(value)


def markdown_table(rows, machine_text=None):
    machine_text = machine_text or machine()
    lines = ["| what | ours | baseline | ratio | unit | machine |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        # Two decimals below 10x: ratios against a bound (0.53x) need them.
        ratio = ("%.2fx" if r["ratio"] < 10 else "%.1fx") % r["ratio"] if r.get("ratio") else "—"
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            r["what"], fmt(r["ours"]), fmt(r.get("baseline")), ratio, r.get("unit", ""),
            machine_text))
    return "\n".join(lines) + "\n"


def print_table(rows):
    print(markdown_table(rows))


def parser(doc):
    """The command line every bench module shares when run on its own
    (`make bench` runs them all through run_all.py)."""
    p = argparse.ArgumentParser(description=doc.strip().split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller inputs (a smoke run)")
    return p


def write_results(path, body, heading=None):
    """Write one part of bench/results.md and keep the rest: heading None is the
    part before the first "## " section (make bench's table), else the "## "
    section of that heading (replaced where it is, appended when new)."""
    from model.atomic import write_text_atomic
    text = open(path, encoding="utf-8").read() if os.path.isfile(path) else ""
    parts = re.split(r"(?m)^(?=## )", text)
    head, sections = parts[0], parts[1:]
    if heading is None:
        head = body
    else:
        new = "%s\n\n%s" % (heading, body.strip("\n"))
        titles = [s.splitlines()[0].strip() for s in sections]
        if heading in titles:
            sections[titles.index(heading)] = new
        else:
            sections.append(new)
    parts = [head] + sections
    write_text_atomic(path, "\n\n".join(part.strip("\n") for part in parts if part.strip()) + "\n")


def seconds_per_step(trainer, steps):
    """Wall seconds per training step: `steps` steps run as Trainer.run runs each,
    without the checkpoint Trainer.run writes when it returns (a checkpoint is
    not a step, and the peer writes none)."""
    fetch = trainer.step_fetches()
    t = time.perf_counter()
    for _ in range(steps):
        trainer.session.run(fetch)
    return (time.perf_counter() - t) / steps
