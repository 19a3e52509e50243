# session 27, call B: 128K with offload=true, a smaller row and cache (rerank=8, device_cache_blocks=256): the answering peak against weights + 4 GiB; answer_many (8 questions, 32K)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 120 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 128K --no-baseline --no-reload -o offload=true -o rerank=8 -o device_cache_blocks=256 --out $OUT/speed-offload-small 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed-offload-small.log
PYTHONPATH=$PWD timeout 150 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --no-baseline --no-reload --many 8 --out $OUT/speed-many 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed-many.log
