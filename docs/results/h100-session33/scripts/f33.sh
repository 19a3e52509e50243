# session 33, call B: GPU tests; t33.py (question reads from threads); m32.py (answer_many's parts); bench speed --many 8
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 160 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider --tb=short -rfs tests/ 2>&1 | tail -15 > $OUT/tests.txt
tail -2 $OUT/tests.txt
PYTHONPATH=$PWD timeout 100 python .gpu/t33.py 2>&1 | grep -v "warn" | tee $OUT/t33.txt
NO_PROFILE=1 PYTHONPATH=$PWD timeout 170 python .gpu/m32.py 2>&1 | grep -v "warn" | tee $OUT/m32.txt | grep "^##\|same"
PYTHONPATH=$PWD timeout 130 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --many 8 --no-reload --no-baseline --out $OUT/many 2>&1 | grep -v "^  warn\|_warn_once" > $OUT/many.log
grep "^| 32K\|scored" $OUT/many.log; rm -f $OUT/many/speed.png
