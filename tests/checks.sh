# Sourced by the packaging tests (wheel_smoke.sh, sdist_offline.sh): where
# the checkout is, the default interpreter (Debian's python3) and the
# ok/fail counters each test ends on.
CHECKOUT=$(cd "$(dirname "${BASH_SOURCE[1]}")/.." && pwd)
if [ -x /usr/bin/python3 ]; then DEFAULT_PY=/usr/bin/python3; else DEFAULT_PY=$(command -v python3); fi
PASSED=0
FAILED=0
ok() { PASSED=$((PASSED + 1)); echo "ok: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $*" >&2; }
