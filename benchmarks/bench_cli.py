"""Wall time of `c4s --help` and `c4s plugins` in fresh processes; prints JSON."""

import json
import subprocess
import sys
import time


def timed(args, n=5):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "c4s_core", *args], capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return min(times), sorted(times)[len(times) // 2]


if __name__ == "__main__":
    out = {}
    for name, args in (("help", ["--help"]), ("plugins", ["plugins", "--json"])):
        best, median = timed(args)
        out[f"{name}_s_best"] = round(best, 3)
        out[f"{name}_s_median"] = round(median, 3)
    print(json.dumps({"benchmark": "cli", **out}))
