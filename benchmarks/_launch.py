"""Run one command and report its wall time and max RSS alone (used by _measure.py).

    .venv/bin/python benchmarks/_launch.py RESULT.json CMD [ARG...]

Why a separate launcher: a child's ``ru_maxrss`` starts from the memory of the process that forked
it (Python forks with vfork, so the forking process's own high-water mark is inherited at exec).
The benchmark process holds GBs after building models and comparing outputs, which would floor
every measurement. This launcher is a fresh, small interpreter that imports nothing heavy, so the
tool it starts is measured from ~10 MB up. Writes ``{"seconds", "max_rss", "returncode"}``.
"""

import json
import os
import subprocess
import sys
import time


def main() -> int:
    result_file, *cmd = sys.argv[1:]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, so Popen must not wait
    with open(result_file, "w") as f:
        json.dump({"seconds": seconds, "max_rss": usage.ru_maxrss * 1024, "returncode": proc.returncode}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
