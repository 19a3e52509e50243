# session 31, call D: bench speed again twice with the static scoring on (no HF), then answer_many 8 at 32K
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
for i in 1 2; do
PYTHONPATH=$PWD timeout 150 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --no-baseline --out $OUT/speed-on$i 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed-on$i.log | grep "^| 32K | actqkv\|^| 128K | actqkv\|scored"
done
PYTHONPATH=$PWD timeout 200 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --many 8 --no-reload --no-baseline --out $OUT/many 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/many.log | tail -12
