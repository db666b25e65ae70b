#!/usr/bin/env bash
# Headless Locust run against `aigw demo` (started here on a free 127.0.0.1 port, killed by PID
# at the end) or against --url, for --run-time; HTML and CSV reports in --out; the exit code
# says whether the thresholds were met. Options and environment: loadtests/locust_run.py --help
# and the README's "Load testing" section.
#
#   loadtests/run.sh --run-time 60s --users 50 --spawn-rate 10
#   AIGW_MAX_P99_MS_BY_ENTRY='chat (stream) ttft=500' loadtests/run.sh --url http://127.0.0.1:8080
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-$here/../.venv/bin/python}"
exec "$python" "$here/locust_run.py" "$@"
