# session 20, call C (run inline): 1M tokens on the 8B shape, KV offloaded to host memory as int8; stopped by its
# own 255 s limit (the session's device time was nearly spent): m1.log holds the last progress lines only
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache; bash .gpu/setup.sh > $OUT/env.txt 2>&1; free -g >> $OUT/env.txt
PYTHONPATH=$PWD timeout 255 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --lengths 1M --no-baseline --no-reload -o offload=true -o host_kv_dtype=int8 -o device_cache_blocks=1024 --decode-tokens 32 --out $OUT/m1 > $OUT/m1-raw.log 2>&1; echo rc=$?
tr '\r' '\n' < $OUT/m1-raw.log | grep -v -e Warn -e '^\s*$' | awk '!/it\/s|s\/it/ || NR%20==0' | tail -60 | tee $OUT/m1.log; rm -f $OUT/m1-raw.log
