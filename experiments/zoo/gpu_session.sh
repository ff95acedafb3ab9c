#!/usr/bin/env bash
# One lent GPU's session for the zoo (docs/zoo.md, "GPU recipe"): every zoo ResNet trained side by
# side on one H100/H200 inside a wall-clock budget, then the executors and, time left, the
# streaming cascade timed on the GPU.
#
#   OUT=/tmp/out experiments/zoo/gpu_session.sh [BUDGET_S] [DEPTHS]
#
# Run from the repository root on the GPU machine, with the carried folder .carry/ holding
# cifar10/ (the bundled CIFAR-10 copy: prepare, SHA256SUMS, cifar10_jpg.tar.gz), whl/ (wheels of
# packages that image lacks, e.g. ml_collections) and whl_fallback/ (this project's versions of
# flax, optax, chex, orbax-checkpoint, used only if the image's own fail the import check).
# Everything a later session needs comes back under $OUT: one weights file per model (npz), and
# results.tar.gz (zoo manifests, metrics, logs, benchmark records).
set -u
budget=${1:-440}
depths=${2:-"20 32 38 56 74 110"}
out=${OUT:?set OUT to the folder that comes back}
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
mkdir -p "$out/logs"
# A fresh folder per call: a machine kept warm between calls still holds the last call's runs,
# and a budgeted run refuses a workdir that holds one.
work=$(mktemp -d /tmp/zoo_session.XXXXXX)

site=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
  .carry/whl/*.whl && export PYTHONPATH="$site:$PWD"
check() {
  python3 - <<'EOF'
import importlib, jax, jax.numpy as jnp
versions = {m: importlib.import_module(m).__version__
            for m in ("jax", "jaxlib", "flax", "optax", "chex", "orbax.checkpoint", "numpy")}
print("versions:", versions, "devices:", jax.devices(), flush=True)
from adaptive_jax.models import CifarResNet, ResNetSpec
from flax import nnx
import experiments.zoo.main  # noqa: F401  (the recipe imports cleanly)
model = CifarResNet(ResNetSpec(depth=8), rngs=nnx.Rngs(0))
model.eval()
print("forward:", nnx.jit(lambda m, x: m(x).sum())(model, jnp.zeros((2, 32, 32, 3))), flush=True)
EOF
}
if ! check >"$out/logs/check.log" 2>&1; then
  echo "the image's packages failed the check ($(tail -n 1 "$out/logs/check.log")); trying the project's"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    .carry/whl_fallback/*.whl
  check >>"$out/logs/check.log" 2>&1 || { cat "$out/logs/check.log"; exit 1; }
fi
cat "$out/logs/check.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "[$(elapsed) s] packages checked"

python3 .carry/cifar10/prepare "$work/manual" || echo "(checksums differ: this Pillow decodes the JPEGs differently; training goes on)"
export ADAPTIVE_JAX_MANUAL_DIR="$work/manual"
echo "[$(elapsed) s] data ready"

# Side by side: each run takes a share of the GPU's memory, not the default 75 %.
count=$(echo $depths | wc -w)
export XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.9 / $count, 3))")
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 20 \
  >"$out/logs/gpu_utilization.csv" 2>&1 &
monitor=$!
pids=()
for depth in $depths; do
  # resnet20 and resnet32 are the CPU recipe's entries, which the OFAS entries were fine-tuned
  # from: the GPU recipe's go beside them.
  name=resnet$depth; case $depth in 20|32) name=resnet${depth}_gpu ;; esac
  python3 -m experiments.zoo.main --workdir="$work/resnet$depth" --zoo_dir="$work/zoo$depth" \
    --name="$name" \
    --config=experiments/zoo/configs/default.py:gpu --config.model.depth="$depth" \
    --time_budget_s="$budget" --sync_dir="$work/sync" --sync_count="$count" ${ZOO_FLAGS:-} \
    >"$out/logs/resnet$depth.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
kill "$monitor" 2>/dev/null
echo "[$(elapsed) s] training done"
for depth in $depths; do
  echo "== resnet$depth"; grep -E "time budget|epoch .*: test|Error|error" "$out/logs/resnet$depth.log" | tail -n 4
done
unset XLA_PYTHON_CLIENT_MEM_FRACTION

# The executors on the GPU, in what time is left before END_S (the benchmark appends to
# benchmarks/).
left=$(( ${END_S:-575} - $(elapsed) ))
lines_md=$(wc -l <benchmarks/RESULTS.md) lines_jsonl=$(wc -l <benchmarks/results.jsonl)
if [ "$left" -gt 20 ]; then
  timeout "$left" python3 -m benchmarks.skip_speedup --quick --torch=False \
    >"$out/logs/skip_speedup.log" 2>&1
  rc=$?
  echo "[$(elapsed) s] skip_speedup rc=$rc (tail below)"
fi
tail -n 25 "$out/logs/skip_speedup.log" 2>/dev/null

# The streaming cascade where batching should pay (docs/zoo.md, "Serving a stream": on XLA:CPU
# the time per image is flat from batch 8, so the trade was not measured on a GPU yet).
left=$(( ${END_S:-575} - $(elapsed) ))
if [ "$left" -gt 60 ]; then
  timeout "$left" python3 -m benchmarks.cascade_serving --num_images=1024 --loads=0.8,saturated \
    --max_wait_ms=5,inf >"$out/logs/cascade_serving.log" 2>&1
  echo "[$(elapsed) s] cascade_serving rc=$? (tail below)"
  tail -n 22 "$out/logs/cascade_serving.log"
fi

for depth in $depths; do
  cp "$work/zoo$depth"/files/*.npz "$out/" 2>/dev/null
  mkdir -p "$out/logs/zoo$depth" "$out/logs/run$depth"
  cp "$work/zoo$depth/manifest.json" "$out/logs/zoo$depth/" 2>/dev/null
  cp "$work/resnet$depth"/metrics.jsonl "$work/resnet$depth"/command.txt "$out/logs/run$depth/" 2>/dev/null
done
tail -n +$((lines_md + 1)) benchmarks/RESULTS.md >"$out/logs/RESULTS.md.new"
tail -n +$((lines_jsonl + 1)) benchmarks/results.jsonl >"$out/logs/results.jsonl.new"
tar -czf "$out/results.tar.gz" -C "$out" logs && rm -rf "$out/logs"
ls -la "$out"
echo "[$(elapsed) s] done"
