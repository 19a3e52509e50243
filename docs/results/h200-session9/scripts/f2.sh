# session 9, call F2: the 8B shape at 128K with offload (the document's KV in host memory, a device block cache): peak while answering
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
timeout 300 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 128K --no-baseline --no-reload -o offload=true --out /root/out/f2/speed 2>&1 | grep -v Warn | tail -30 | tee $OUT/speed.log
tar czf $OUT/f2.tgz -C /root/out f2
