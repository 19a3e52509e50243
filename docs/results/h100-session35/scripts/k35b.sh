# session 35, call b: bench --many 8 with generate_ids reading as answers read (padded)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; git diff --stat HEAD; } > $OUT/env.txt 2>&1
tail -2 $OUT/env.txt
PYTHONPATH=$PWD timeout 200 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --many 8 --no-reload --no-baseline --out $OUT/many 2>&1 | grep -v "^  warn\|_warn_once" > $OUT/many.log
grep "^| 32K" $OUT/many.log | head -3; python -c "import json; r=json.load(open('$OUT/many/speed.json'))['rows'][0]; print({k: v for k, v in r.items() if k.startswith('many') or k in ('ttft_s', 'decode_ms_per_token')})"; rm -f $OUT/many/speed.png
