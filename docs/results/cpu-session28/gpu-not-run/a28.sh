# session 28, call A: this tree (TREE): the GPU tests; bench speed 32K,128K (no HF: the device time left allowed no more; no reload)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 110 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider --tb=short -rfs --durations=8 tests/ 2>&1 | grep -v Warn | tail -30 > $OUT/tests.txt
tail -2 $OUT/tests.txt
PYTHONPATH=$PWD timeout 130 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-baseline --no-reload --out $OUT/speed 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed.log
