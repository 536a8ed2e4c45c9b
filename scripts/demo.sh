#!/usr/bin/env bash
# Sets up what it needs (scripts/setup.sh), then runs the whole workflow on the built-in
# sample: napari opens, trains a short run fitted to this machine with live maps, embeds the
# scan, clusters it and puts the probe on a position. Options go to `stem-ae demo` (--help).
# Without a screen it runs on a virtual one (Xvfb), saves stem-ae-demo.png and quits when done.
set -euo pipefail
# shellcheck source=scripts/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
stem_ae_setup
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
    stem_ae_say "no screen: running the demo on a virtual one; the window is saved to stem-ae-demo.png"
    exec xvfb-run -a -s "-screen 0 1366x768x24" stem-ae demo --quit-when-done \
        --screenshot stem-ae-demo.png "$@"
fi
exec stem-ae demo "$@"
