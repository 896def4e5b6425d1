"""bench/results.md is written by three runs (make bench, make bench-peer, the
bandwidth entry); each must replace only its own part."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import common  # noqa: E402


def test_each_run_replaces_only_its_own_part(tmp_path):
    path = str(tmp_path / "results.md")
    common.write_results(path, "# Benchmarks\n\nold table\n")
    common.write_results(path, "old peer rows\n", "## PyTorch peer")
    common.write_results(path, "bandwidth notes\n", "## Bandwidth")
    common.write_results(path, "# Benchmarks\n\nnew table\n")
    common.write_results(path, "new peer rows\n", "## PyTorch peer")
    text = open(path, encoding="utf-8").read()
    assert text == ("# Benchmarks\n\nnew table\n\n## PyTorch peer\n\nnew peer rows\n\n"
                    "## Bandwidth\n\nbandwidth notes\n")
