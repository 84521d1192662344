#!/usr/bin/env bash
# Sets everything up (see setup.sh) and runs the end-to-end demo on generated data.
# Extra arguments go to `innerdist demo` (e.g. --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/innerdist demo "$@"
