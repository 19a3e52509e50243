# session 29, call A: this tree (TREE): the GPU tests; bench speed 32K,128K beside HF (no reload); the same at 32K with decode_joined_projections; p28 at 32K; graph steps of 05e2557 (.gpu/old29) at 32K
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
cat $OUT/env.txt
PYTHONPATH=$PWD timeout 140 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider --tb=short -rfs --durations=8 tests/ 2>&1 | grep -v Warn | tail -40 > $OUT/tests.txt
tail -3 $OUT/tests.txt
PYTHONPATH=$PWD timeout 220 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --out $OUT/speed 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed.log | grep "^|"
PYTHONPATH=$PWD timeout 80 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --no-reload --no-baseline -o decode_joined_projections=true --out $OUT/speed-joined 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed-joined.log | grep "^|"
LENGTHS=32768 PYTHONPATH=$PWD timeout 80 python .gpu/p28.py 2>&1 | grep -v "^  warn\|_warn_once\|USDT" > $OUT/p28-new.txt; grep "###" $OUT/p28-new.txt
P=$PWD/.gpu/old29; (cd $P && ONLY_GRAPH=1 LENGTHS=32768 PYTHONPATH=$P timeout 60 python $OLDPWD/.gpu/p28.py 2>&1 | grep -v "^  warn\|_warn_once\|USDT" > $OUT/p28-old.txt); grep "###" $OUT/p28-old.txt
