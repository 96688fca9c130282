#!/usr/bin/env bash
# Test set-up on a fresh machine: a virtual environment with the package and its test
# extras (torch pinned to the CPU wheel by constraints.txt; ruff and clang-format, which
# .ci/run lints with, are among them), and, where we are root and it is missing, Debian's
# chromium for the browser tests (viewer, report.html; they skip without it).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
# The reference LPIPS implementation (tests/test_lpips.py) and the linear-layer weights it
# ships (recon.evaluate.lpips finds them). Without --no-deps pip pulls torchvision, whose
# only release for torch 2.13 breaks every `import transformers` / torchmetrics import here.
.venv/bin/python -m pip install -q --no-deps 'lpips==0.1.4'
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium for the viewer's browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "chromium could not be installed: the browser test will skip"
  else
    echo "chromium not found (needs root to install): the browser test will skip"
  fi
fi
