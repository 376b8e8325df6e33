#!/usr/bin/env bash
# Measures how long `make setup` takes when everything is already installed (target: < 10 s)
# and writes results/bench_setup.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh >/dev/null 2>&1   # make sure the first run happened
exec .venv/bin/python - <<'PY'
import json, os, platform, subprocess, time
runs = []
for _ in range(3):
    t0 = time.perf_counter()
    subprocess.run(["bash", "scripts/setup_env.sh"], check=True, capture_output=True)
    runs.append(round(time.perf_counter() - t0, 3))
os.makedirs("results", exist_ok=True)
res = {"benchmark": "make setup with everything installed", "seconds": runs, "target_s": 10,
       "cpus": os.cpu_count(), "machine": platform.platform(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
json.dump(res, open("results/bench_setup.json", "w"), indent=1)
print(json.dumps(res))
PY
