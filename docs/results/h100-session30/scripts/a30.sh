# session 30, call A: this tree (TREE): the GPU tests; bench speed 32K,128K beside HF (no reload)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
cat $OUT/env.txt
PYTHONPATH=$PWD timeout 150 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider --tb=short -rfs --durations=8 tests/ 2>&1 | grep -v Warn | tail -60 > $OUT/tests.txt
tail -25 $OUT/tests.txt
PYTHONPATH=$PWD timeout 240 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --out $OUT/speed 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed.log | grep "^|"
