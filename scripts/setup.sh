#!/usr/bin/env bash
# Set up a fresh checkout: Debian packages (when root), a virtual environment in .venv, zfnet and its deps.
#   scripts/setup.sh demo   what `make demo` needs: Python packages only (the report's data ships with zfnet; the
#                           explore extra, zfnet explore's and zfnet serve's server, comes with it)
#   scripts/setup.sh test   what `make test` needs: also Debian's Fashion-MNIST, Chromium, ChromeDriver and strace
#   scripts/setup.sh bench  what `make bench` needs: the test setup and the peers bench/peers.py measures
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-demo}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
# torch pinned to the builds this project is tested with (pip takes them from the local wheel cache when present)
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

debs=""
[ "$what" != "demo" ] && debs="dataset-fashion-mnist chromium chromium-driver strace"
missing=""
for p in $debs; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "setup: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends $missing >/dev/null 2>&1 \
      || { apt-get update >/dev/null && apt-get install -y --no-install-recommends $missing >/dev/null; }
  else
    echo "setup: missing Debian packages; run this once, then rerun:" >&2
    echo "  sudo apt-get install -y --no-install-recommends$missing" >&2
    exit 2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.zfnet-$what-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing torch ($TORCH_SPEC) and zfnet into $VENV (a minute or two)"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q $TORCH_SPEC 2>&1 | grep -v "^WARNING" || true
  extra="[explore]"
  [ "$what" = "test" ] && extra="[test,explore]"
  [ "$what" = "bench" ] && extra="[test,bench,explore]"
  "$VENV/bin/python" -m pip install -q -e ".$extra" 2>&1 | grep -v "^WARNING" || true
  "$VENV/bin/python" -c "import torch, torchvision, zfnet" 
  rm -f "$VENV"/.zfnet-"$what"-*
  touch "$stamp"
fi
