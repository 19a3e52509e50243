# session 20, call B (run inline, as one command line): answer_many with padded rows at main, then the
# tree of de6ecae (before the fourteenth/fifteenth sessions' kernels), each alone
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache; bash .gpu/setup.sh > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 185 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --many 8 --no-baseline --no-reload -o decode_pad_rows=8 --out $OUT/many 2>&1 | grep -v Warn | tee $OUT/many.log; rm -f $OUT/many/speed.png
# .gpu/old: `git archive de6ecae actqkv_llm | tar -x -C .gpu/old`, carried
cd .gpu/old && PYTHONPATH=$PWD timeout 110 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --no-baseline --no-reload --out $OUT/old 2>&1 | grep -v Warn | tee $OUT/old.log; rm -f $OUT/old/speed.png
