# session 23, call H: synchronizing calls in a 32K prefill and in decoding (sync23b.py), then bench speed 32K/128K beside HF SDPA at the tree's default
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; git status --short; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 150 python .gpu/sync23b.py 2>&1 | grep -v "^  warnings.warn\|_warn_once" | tail -80 | tee $OUT/sync23b.txt
PYTHONPATH=$PWD timeout 220 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --out $OUT/speed 2>&1 | grep -v Warn | tee $OUT/speed.log
