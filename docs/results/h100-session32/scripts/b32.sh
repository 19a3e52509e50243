# session 32, call B: answer_many's slow steps with and without multi-row captures (s32.py); m32 (breakdown);
# bench speed --many 8 at 32K; bench speed at 32K/128K (no HF)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 150 python .gpu/s32.py 2>&1 | grep -v "warn" | tee $OUT/s32.txt
NO_PROFILE=1 PYTHONPATH=$PWD timeout 120 python .gpu/m32.py 2>&1 | grep -v "warn" | tee $OUT/m32.txt
PYTHONPATH=$PWD timeout 150 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --many 8 --no-reload --no-baseline --out $OUT/many 2>&1 | grep -v "^  warn\|_warn_once" > $OUT/many.log
grep "^| 32K\|scored" $OUT/many.log; rm -f $OUT/many/speed.png
PYTHONPATH=$PWD timeout 150 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --no-baseline --out $OUT/speed1 2>&1 | grep -v "^  warn\|_warn_once" > $OUT/speed1.log
grep "^| 32K | actqkv | [0-9.]* | [0-9,]* |\|^| 128K | actqkv | [0-9.]* | [0-9,]* |\|scored" $OUT/speed1.log; rm -f $OUT/speed1/speed.png
