# session 31, call B: this tree (static scoring): the GPU tests, then bench speed 32K,128K beside HF
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
cat $OUT/env.txt
PYTHONPATH=$PWD timeout 200 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider --tb=short -rfs --durations=5 tests/ 2>&1 | grep -v Warn | tail -80 > $OUT/tests.txt
tail -30 $OUT/tests.txt
PYTHONPATH=$PWD timeout 300 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --out $OUT/speed 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed.log | grep "^|\|scored\|step"
