#!/usr/bin/env bash
# GPU readiness check, for the day a CUDA machine is at hand (budget: < 8 minutes).
#
#   apps/gpu_check.sh [PYTHON]        # default: .venv/bin/python, else python3
#
# 1. builds the extension with CUDA (fails if the build has no CUDA),
# 2. runs the GPU parity tests: our CUDA kernels vs our CPU backend vs gsplat, forward
#    outputs and gradients (tests/test_cuda_parity.py, tests/test_gsplat_backend.py) and the
#    backend choice (tests/test_render_backend_choice.py),
# 3. times our CUDA backend against gsplat's CUDA rasterization, forward + backward, at
#    50k / 200k / 1M Gaussians (recon.render.benchmark),
# 4. fits LLFF fern with 3 views on the GPU (when the pipeline has a device option and the
#    scene is present; otherwise the step is recorded as skipped, with the reason),
# and writes everything to benchmarks/results/gpu.json. Each step has its own time limit and
# a failed step does not stop the later ones; the exit status is 1 if any step failed.
# When the parity tests pass, set CUDA_BACKEND_VALIDATED = True in recon/render/__init__.py
# so that backend="auto" uses our kernels on CUDA tensors.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
WORK=$(mktemp -d /tmp/recon_gpu_check.XXXXXX)
OUT=benchmarks/results/gpu.json
FERN=${RECON_FERN:-../shared/data/llff_fern}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "gpu_check: python=$PY work=$WORK"

step() {  # step NAME LIMIT_S CMD...: runs CMD with a time limit, logs to $WORK/NAME.log
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" >>"$WORK/steps.jsonl"
  echo "gpu_check: $name rc=$rc ($((SECONDS - t0)) s)"
  tail -3 "$WORK/$name.log"
}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device visible to torch; nothing to check" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$WORK/gpu.txt" 2>&1

step build 300 "$PY" -c "
from recon.render import _ext
m = _ext.load(verbose=True)
assert m.has_cuda(), 'extension built without CUDA'
print('built', _ext.build_dir())"

step parity 180 "$PY" -m pytest -q -p no:cacheprovider --junitxml="$WORK/parity.xml" \
  tests/test_cuda_parity.py tests/test_gsplat_backend.py tests/test_render_backend_choice.py

step raster 180 "$PY" -c "
from recon.render.benchmark import run_raster_bench
run_raster_bench('$WORK/raster.json', sizes=(50_000, 200_000, 1_000_000), backends=['cuda', 'gsplat'],
                 repeats=5, progress=False)"

if "$PY" -c "from recon.optimise.config import FitConfig as F; import sys; sys.exit(0 if 'device' in F.__dataclass_fields__ else 1)" 2>/dev/null \
  && [ -d "$FERN" ]; then
  step fit 150 "$PY" -m recon.cli fit "$FERN" --views 3 --config llff3 --set device=cuda \
    --out "$WORK/fern_fit" --no-progress
else
  echo '{"step": "fit", "rc": null, "skipped": "recon fit has no device option yet (FitConfig.device) or the fern scene is missing"}' >>"$WORK/steps.jsonl"
  echo "gpu_check: fit skipped"
fi

"$PY" - "$WORK" "$OUT" <<'EOF'
import json, sys, time, xml.etree.ElementTree as ET
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
steps = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines()]
report = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
          "gpu": (work / "gpu.txt").read_text().strip(), "steps": steps}
if (work / "parity.xml").is_file():
    suite = ET.parse(work / "parity.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    report["parity"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    report["parity"]["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                                  if c.find("failure") is not None or c.find("error") is not None]
if (work / "raster.json").is_file():
    report["raster"] = json.loads((work / "raster.json").read_text())
if (work / "fern_fit" / "metrics.json").is_file():
    report["fern_fit"] = json.loads((work / "fern_fit" / "metrics.json").read_text())
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(report, indent=2))
print("gpu_check: wrote", out)
sys.exit(1 if any(s.get("rc") not in (0, None) for s in steps) else 0)
EOF
