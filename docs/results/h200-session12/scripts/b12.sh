# session 12, call B: the final tree (the new scoring's parts uncompiled): probe14 (per-step times by
# path, 32K, 1 and 8 rows), then bench speed on the 8B shape with HF SDPA beside it
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache PYTHONPATH=$PWD
bash .gpu/setup.sh > $OUT/env.txt 2>&1
timeout 130 python .gpu/probe14.py 2>&1 | grep -v -e Warn -e "^  " | tee $OUT/probe14.txt
mkdir -p /root/out/b
timeout 440 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --many 8 --out /root/out/b/speed 2>&1 | grep -v Warn | tail -40 | tee $OUT/speed.log
tar czf $OUT/b.tgz -C /root/out b
