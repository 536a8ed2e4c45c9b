#!/usr/bin/env bash
# Sets up what it needs (scripts/setup.sh), then runs the test suite; arguments go to pytest.
# GUI tests start their own virtual screen (pytest-xvfb, with the xvfb system package).
set -euo pipefail
# shellcheck source=scripts/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
stem_ae_setup
cd "$STEM_AE_ROOT"
exec python -m pytest "$@"
