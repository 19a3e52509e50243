# session 25, call B: 128K with offload=true and a 64-block device cache (bench speed); the live set at the peak of answering at 128K with offload (default cache); a profiled 32K prefill
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 200 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 128K --no-baseline --no-reload -o offload=true -o device_cache_blocks=64 --out $OUT/speed-offload64 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed-offload64.log
SHORT=1 PARTS=1,2 PROFILE=32768 PYTHONPATH=$PWD timeout 200 python .gpu/pf25.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/pf25.txt
