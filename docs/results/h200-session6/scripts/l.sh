# session 6, call 1: profiles (static step, 32K prefill), 128K TTFT from disk (format 4), offload peak
bash .gpu/setup2.sh > $OUT/env.txt 2>&1; cat $OUT/env.txt
mkdir -p $OUT/s; export ACTQKV_CACHE_DIR=/root/cache
timeout 200 python .gpu/prof6.py 32768 > $OUT/s/prof32k.txt 2>&1; grep -E "^(prefill|PREFILL|DECODE|STATIC|graph keys|peak)" $OUT/s/prof32k.txt
timeout 170 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 128K --no-baseline --out $OUT/s/r128 2>&1 | tail -14 | tee $OUT/s/r128.log
timeout 170 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 128K --no-baseline --no-reload -o offload=true --out $OUT/s/off128 2>&1 | tail -10 | tee $OUT/s/off128.log
