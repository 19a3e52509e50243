# session 11, call D (and E, after the batch of --many was timed twice): the 8B shape's speed with decode_compile (on by default on CUDA)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
mkdir -p /root/out/d
timeout 420 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --many 8 --out /root/out/d/speed 2>&1 | grep -v Warn | tail -40 | tee $OUT/speed.log
tar czf $OUT/d.tgz -C /root/out d
