set -x
C="--random-arch smollm2-135m --device cpu --dtype fp32 --lengths 16K --no-baseline --no-reload --decode-tokens 32 --repeats 1 --no-progress"
export OMP_NUM_THREADS=2
cd /tmp/old && PYTHONPATH=/tmp/old python -m actqkv_llm bench speed $C --out /tmp/cpuside/old1 2>&1 | tail -4
cd /work/main && python -m actqkv_llm bench speed $C --out /tmp/cpuside/new1 2>&1 | tail -4
cd /tmp/old && PYTHONPATH=/tmp/old python -m actqkv_llm bench speed $C --out /tmp/cpuside/old2 2>&1 | tail -4
cd /work/main && python -m actqkv_llm bench speed $C --out /tmp/cpuside/new2 2>&1 | tail -4
cd /work/main && python -m actqkv_llm bench speed $C -o decode_graph=true --out /tmp/cpuside/new-static 2>&1 | tail -4
