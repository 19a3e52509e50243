set -x
while pgrep -f "chain.sh" >/dev/null; do sleep 10; done
cd /work/main
date
git log -1 --format=%h
OMP_NUM_THREADS=2 python -m actqkv_llm bench quality --model smollm2 --device cpu --dtype fp32 --tasks passkey \
  --lengths 32K --samples 2 --methods actqkv --no-progress --out /tmp/smol32
echo rc=$?
date
OMP_NUM_THREADS=2 python -m actqkv_llm bench quality --model smollm2 --device cpu --dtype fp32 --tasks passkey \
  --lengths 64K --samples 2 --methods actqkv --no-progress --out /tmp/smol64
echo rc=$?
date
