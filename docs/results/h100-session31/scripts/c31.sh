# session 31, call C: the same bench with the static scoring off (the eager scoring between segments), no HF
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 280 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --no-baseline -o decode_static_scoring=false --out $OUT/speed-off 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed-off.log | grep "^|\|scored\|step"
