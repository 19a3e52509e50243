# session 22, call B: 1M tokens on the 8B shape, one GPU, KV offloaded to host memory as int8, device cache 1024 blocks per layer, prefill scoring in the Triton passes
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; git log --oneline 2>/dev/null | head -1; git status --short; free -g; } 2>&1 | tee $OUT/m1.log
PYTHONPATH=$PWD timeout 565 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --lengths 1M --no-baseline --no-reload -o offload=true -o host_kv_dtype=int8 -o device_cache_blocks=1024 -o prefill_kernel=triton --out $OUT/m1 2>&1 | grep -v Warn | tr '\r' '\n' | grep -v "^\s*$" | tail -60 | tee -a $OUT/m1.log
rm -f $OUT/m1/speed.png
