# session 26, call A (tree in .gpu/TREE): bench speed 32K/128K beside HF SDPA with the cold reload; 128K with offload=true (default 512-block cache): answering peak after the window-copy fix and the question's keys no longer held beside the row
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; df -h /tmp | tail -1; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 330 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --out $OUT/speed 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed.log
PYTHONPATH=$PWD timeout 200 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 128K --no-baseline --no-reload -o offload=true --out $OUT/speed-offload 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed-offload.log
