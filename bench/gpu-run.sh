#!/usr/bin/env bash
# The run on a lent GPU machine (the workplace's `device` tool: one H100, 16 cores, Python 3.12,
# CUDA, no network). It builds the CUDA llama-server with the project's own build script, then
# runs the benchmarks with LLAMARIG_BENCH_GPU=nvml, so the rigs use NVML and the servers GPU 0.
#
# It needs, in the repository root (both git-ignored; bench/README.md says how they are made):
#   .whl/                    Python 3.12 wheels of llamarig's dependencies and the benchmarks' clients
#   .gpu/llama-src.tar.xz    the llama.cpp sources vendored in the pinned llama-cpp-python sdist
#   or .gpu/llama-server.xz.part-*  a llama-server from an earlier run, or this VM's CPU build (no build)
#   .gpu/temporal.xz         optional: the pinned temporal CLI (the work benchmark's embedded server)
# Usage: bench/gpu-run.sh [build] [NAME[@CPUS] ...]   (NAME: benchmarks for bench/run.py, a name may repeat;
# each may run BENCH_TIMEOUT_S seconds, default 300; BENCH_ARGS are passed to each, e.g. --smoke)
# LLAMARIG_BENCH_GPU= (set, empty) keeps the rigs on the simulated inventory (the work benchmark);
# GPU_RUN_SITE=system lets the venv see the machine's packages after its own, for a .whl/ that
# leaves some out (the carry is 64 MiB); their .pth files are not run, so Python starts as fast.
# Writes into $OUT: bench.log, results.md, N-NAME.json (N: the run's place), and after a build
# llama-server.xz.part-* (the tool brings back 8 files of up to 16 MiB).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/llamarig-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PATH=/usr/local/cuda/bin:$PATH
started=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv | tee "$OUT/bench.log"

# A clean virtual environment, as the image's /opt/venv: the machine's own python3 is a PyTorch
# venv whose many packages and .pth files cost every Python start (the CLI, supervisord, the API,
# each launch gate) 45 ms more (57 against 12 ms, measured there), which the image does not pay.
# llamarig is installed, not editable, as in the image.
image_py=$(command -v python3)
venv=/tmp/rigenv
py=$venv/bin/python
whl=${WHL:-.whl}
if "$image_py" -m venv "$venv" >>"$OUT/bench.log" 2>&1; then pip=("$py" -m pip)
else rm -rf "$venv"; "$image_py" -m venv --without-pip "$venv" || exit 1; pip=("$image_py" -m pip --python "$py"); fi
if [ "${GPU_RUN_SITE:-}" = system ]; then  # the machine's python3 is itself a venv: --system-site-packages would miss it
  "$image_py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
    >"$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz-machine.pth" || exit 1
fi
"${pip[@]}" install -q --no-index --no-deps "$whl"/*.whl >>"$OUT/bench.log" 2>&1 || exit 1
"${pip[@]}" install -q --no-index --no-deps --no-build-isolation . >>"$OUT/bench.log" 2>&1 || exit 1
for which in "$image_py" "$py"; do  # what one Python start costs in each: best of 5
  "$py" -c 'import subprocess, sys, time
def once():
    t = time.perf_counter(); subprocess.run([sys.argv[1], "-c", "pass"], check=True); return time.perf_counter() - t
print(sys.argv[1], "starts in", round(min(once() for _ in range(5)) * 1000, 1), "ms")' "$which" | tee -a "$OUT/bench.log"
done
bin=$venv/bin
if [ -f .gpu/temporal.xz ]; then xz -dc .gpu/temporal.xz >"$bin/temporal" && chmod +x "$bin/temporal" || exit 1; fi

if [ "${1:-}" = build ]; then
  shift
  mkdir -p /tmp/src && tar -xJf .gpu/llama-src.tar.xz -C /tmp/src
  export LLAMARIG_LLAMA_CPP_SRC=/tmp/src/llama.cpp LLAMARIG_CACHE=/tmp/cache
  # One architecture (sm_90: H100/H200) and no FlashAttention kernels keep nvcc under minutes.
  export LLAMARIG_CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90-real -DGGML_CUDA_FA=OFF -G Ninja"
  server=$( { time runtime/build-llama-server.sh --cuda; } 2>/tmp/build.log | tail -n 1) || {
    tail -n 40 /tmp/build.log; exit 1; }
  tail -n 4 /tmp/build.log | tee -a "$OUT/bench.log"
  xz -T0 -6 -c "$server" | split -b 15M - "$OUT/llama-server.xz.part-"
else
  server=/tmp/llama-server
  cat .gpu/llama-server.xz.part-* | xz -d >"$server" && chmod +x "$server"
fi
ln -sf "$server" "$bin/llama-server"
ldd "$server" | grep 'not found' | tee -a "$OUT/bench.log"  # a CPU build from another host may lack a library
"$bin/llama-server" --version 2>&1 | tail -n 3 | tee -a "$OUT/bench.log"
echo "set-up took $(( $(date +%s) - started )) s" | tee -a "$OUT/bench.log"

export LLAMARIG_BENCH_GPU=${LLAMARIG_BENCH_GPU-nvml}
n=0
for name in "$@"; do
  n=$((n + 1))
  bench=${name%@*} pin=()  # NAME@CPUS runs it on those CPUs alone (taskset -c CPUS), e.g. work@0-1
  [ "$bench" != "$name" ] && pin=(taskset -c "${name#*@}")
  echo "== $n: $name at $(( $(date +%s) - started )) s" | tee -a "$OUT/bench.log"
  # shellcheck disable=SC2086
  "${pin[@]}" timeout "${BENCH_TIMEOUT_S:-300}" $py bench/run.py "$bench" ${BENCH_ARGS:-} --out "$OUT/$n-$bench.json" \
    >>"$OUT/results.md" 2>>"$OUT/bench.log"
  echo "exit $?" | tee -a "$OUT/bench.log"
done
cat "$OUT/results.md" 2>/dev/null
