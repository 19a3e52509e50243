# session 29, call C (the device time left after failed starts): this tree (TREE): the GPU tests; bench speed 32K beside HF; 32K with decode_joined_projections
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
cat $OUT/env.txt
PYTHONPATH=$PWD timeout 120 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider --tb=short -rfs tests/ 2>&1 | grep -v Warn | tail -40 > $OUT/tests.txt
tail -3 $OUT/tests.txt
PYTHONPATH=$PWD timeout 95 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --no-reload --out $OUT/speed 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed.log | grep "^|"
PYTHONPATH=$PWD timeout 60 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --no-reload --no-baseline -o decode_joined_projections=true --out $OUT/speed-joined 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed-joined.log | grep "^|"
