# session 32, call C: GPU tests; bench speed --many 8 at 32K; s32.py (FINAL: slow steps of answer_many); bench speed at 32K/128K (no HF)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 200 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider --tb=short -rfs tests/ 2>&1 | tail -15 > $OUT/tests.txt
tail -2 $OUT/tests.txt
PYTHONPATH=$PWD timeout 130 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --many 8 --no-reload --no-baseline --out $OUT/many 2>&1 | grep -v "^  warn\|_warn_once" > $OUT/many.log
grep "^| 32K\|scored" $OUT/many.log; rm -f $OUT/many/speed.png
FINAL=1 PYTHONPATH=$PWD timeout 100 python .gpu/s32.py 2>&1 | grep -v "warn" | tee $OUT/s32.txt
PYTHONPATH=$PWD timeout 150 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --no-baseline --out $OUT/speed 2>&1 | grep -v "^  warn\|_warn_once" > $OUT/speed.log
grep "^| 32K | actqkv | [0-9.]* | [0-9,]* |\|^| 128K | actqkv | [0-9.]* | [0-9,]* |\|scored" $OUT/speed.log; rm -f $OUT/speed/speed.png $OUT/speed/speed.md
