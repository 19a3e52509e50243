# session 35, call a: where question_batch's tokens part (q35.py), bench --many 8 with it (now the default), GPU tests, decode/TTFT
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; git diff --stat HEAD; } > $OUT/env.txt 2>&1
tail -3 $OUT/env.txt
PYTHONPATH=$PWD timeout 150 python .gpu/q35.py 2>&1 | grep -v "warn" > $OUT/q35.txt
head -20 $OUT/q35.txt | cut -c1-220; grep "one read" $OUT/q35.txt
PYTHONPATH=$PWD timeout 150 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --many 8 --no-reload --no-baseline --out $OUT/many 2>&1 | grep -v "^  warn\|_warn_once" > $OUT/many.log
python -c "import json; r=json.load(open('$OUT/many/speed.json'))['rows'][0]; print({k: v for k, v in r.items() if k.startswith('many')})"; rm -f $OUT/many/speed.png
PYTHONPATH=$PWD timeout 170 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider --tb=short -rfs tests/ 2>&1 | tail -15 > $OUT/tests.txt
tail -3 $OUT/tests.txt
