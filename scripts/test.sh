#!/usr/bin/env bash
# Sets everything up (see setup.sh) and runs the default test suite: everything but the
# tests marked slow (`bash scripts/test.sh -m slow` runs those; CI runs both). Extra
# arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -m "not slow" "$@"
