# session 23, call E: the scoring alone before/after the while loop; bench speed 32K/128K beside HF SDPA at the tree's default
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; git log --oneline 2>/dev/null | head -1; git status --short; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 150 python .gpu/sw23.py 2>&1 | grep -v Warn | tee $OUT/sw23.txt
PYTHONPATH=$PWD timeout 400 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --out $OUT/speed 2>&1 | grep -v Warn | tee $OUT/speed.log
