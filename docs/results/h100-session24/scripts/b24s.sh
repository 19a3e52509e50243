# session 24, call B, trimmed to the device time left (17be970): pf24.py part 0 (bias kernels / aligned mask against the tree before, one prefill each at 32K and 128K); bench speed 32K/128K beside HF SDPA
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree 17be970"; } > $OUT/env.txt 2>&1
SHORT=1 REPS32=1 PARTS=0 PYTHONPATH=$PWD timeout 85 python .gpu/pf24.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/pf24.txt
PYTHONPATH=$PWD timeout 215 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --out $OUT/speed 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed.log
