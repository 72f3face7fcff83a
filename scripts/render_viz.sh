#!/usr/bin/env bash
# Renders a plan viewer (lora-compile --viz / lora-run --viz: index.html) to a PNG with headless
# Chromium, e.g. for the README. Not needed by the tests.
#
#   scripts/render_viz.sh INDEX_HTML OUT_PNG [--full] [--width PX] [--height PX]
#
# By default only the timelines are drawn (the viewer's #timelines view: title, predicted and
# measured timeline, the measured bubble table); --full renders the whole page. The height
# defaults to the section's height as measured by a first render (--dump-dom), so nothing is cut.
# Chromium (Debian package `chromium`, ~300 MB installed) is installed with apt-get when it is
# missing and this runs as root (or with sudo); scripts/install_deps.sh --render installs it too.
set -euo pipefail
usage() { echo "usage: $0 INDEX_HTML OUT_PNG [--full] [--width PX] [--height PX]" >&2; exit 2; }
[ $# -ge 2 ] || usage
HTML="$1"; PNG="$2"; shift 2
FULL=0; WIDTH=1300; HEIGHT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --full) FULL=1 ;;
    --width) WIDTH="${2:?}"; shift ;;
    --height) HEIGHT="${2:?}"; shift ;;
    *) usage ;;
  esac
  shift
done
[ -f "$HTML" ] || { echo "render_viz: $HTML: no such file (write one with lora-compile --viz or lora-run --viz)" >&2; exit 1; }

CHROME="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [ -z "$CHROME" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "render_viz: installing Debian's chromium (headless screenshots; ~300 MB)" >&2
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >&2
  CHROME="$(command -v chromium)"
fi

URL="file://$(cd "$(dirname "$HTML")" && pwd)/$(basename "$HTML")"
[ "$FULL" = 1 ] || URL="$URL#timelines"
PROFILE="$(mktemp -d)"
trap 'rm -rf "$PROFILE"' EXIT
# --no-sandbox: Chromium refuses to run as root with its sandbox; the page is a local file.
FLAGS=(--headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1
       --user-data-dir="$PROFILE" --no-first-run --disable-extensions)
if [ -z "$HEIGHT" ]; then
  # The viewer writes its content height into <body data-height> once laid out.
  HEIGHT="$("$CHROME" "${FLAGS[@]}" --window-size="$WIDTH,2000" --virtual-time-budget=2000 --dump-dom "$URL" 2>/dev/null \
            | sed -n 's/.*<body[^>]*data-height="\([0-9]*\)".*/\1/p' | head -1)"
  HEIGHT="${HEIGHT:-1400}"
fi
mkdir -p "$(dirname "$PNG")"
"$CHROME" "${FLAGS[@]}" --window-size="$WIDTH,$HEIGHT" --virtual-time-budget=2000 --screenshot="$PNG" "$URL" 2>/dev/null >/dev/null
[ -s "$PNG" ] || { echo "render_viz: chromium wrote no $PNG" >&2; exit 1; }
echo "render_viz: $PNG (${WIDTH}x${HEIGHT}) from $HTML$([ "$FULL" = 1 ] || echo '#timelines')"
