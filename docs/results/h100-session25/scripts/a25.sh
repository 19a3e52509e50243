# session 25, call A (tree in .gpu/TREE): bench speed 32K/128K beside HF SDPA with the cold reload (e47911c's aligned first chunk timed); 128K with 32K prefill pieces
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; df -h /tmp | tail -1; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 330 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --out $OUT/speed 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed.log
PYTHONPATH=$PWD timeout 150 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-baseline --no-reload -o prefill_chunk=32768 --decode-tokens 16 --out $OUT/speed-chunk32k 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed-chunk32k.log
