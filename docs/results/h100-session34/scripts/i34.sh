# session 34, call B: bench speed --many 8 (questions read together), GPU tests, decode at 32K/128K
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
tail -2 $OUT/env.txt
PYTHONPATH=$PWD timeout 170 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --many 8 --no-reload --no-baseline --out $OUT/many 2>&1 | grep -v "^  warn\|_warn_once" > $OUT/many.log
grep "^| 32K\|scored\|Error\|error" $OUT/many.log | head; python -c "import json; r=json.load(open('$OUT/many/speed.json'))['rows'][0]; print({k: v for k, v in r.items() if k.startswith('many')})"; rm -f $OUT/many/speed.png
PYTHONPATH=$PWD timeout 170 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider --tb=short -rfs tests/ 2>&1 | tail -15 > $OUT/tests.txt
tail -3 $OUT/tests.txt
PYTHONPATH=$PWD timeout 150 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --no-baseline --out $OUT/speed 2>&1 | grep -v "^  warn\|_warn_once" > $OUT/speed.log
grep "^| 32K | actqkv | [0-9.]* | [0-9,]* |\|^| 128K | actqkv | [0-9.]* | [0-9,]* |\|scored" $OUT/speed.log; rm -f $OUT/speed/speed.png
