# session 21, call F: 1M tokens on the 8B shape, one GPU, KV offloaded to host memory as int8, device cache 1024 blocks per layer
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; free -g; } 2>&1 | tee $OUT/m1.log
PYTHONPATH=$PWD timeout 560 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --lengths 1M --no-baseline --no-reload -o offload=true -o host_kv_dtype=int8 -o device_cache_blocks=1024 --out $OUT/m1 2>&1 | grep -v Warn | tr '\r' '\n' | grep -v "^\s*$" | tail -80 | tee -a $OUT/m1.log
