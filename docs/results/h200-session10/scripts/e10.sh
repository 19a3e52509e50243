# session 10, call E: GPU tests; the 8B shape speed after the memory changes (bounds in bf16 and
# read in parts, no joined copy per question; held candidate keys dropped once a row holds them),
# then 128K with offload (the document's KV in host memory): peak while answering
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
mkdir -p /root/out/e
timeout 150 python -m pytest -o addopts="" -q -p no:cacheprovider tests/test_gpu.py tests/test_tile_stats.py tests/test_static_decode.py -m "not slow" 2>&1 | tail -15 | tee $OUT/gpu-tests.txt
timeout 280 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --many 8 --out /root/out/e/speed 2>&1 | grep -v Warn | tail -40 | tee $OUT/speed.log
timeout 130 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 128K --no-baseline --no-reload -o offload=true --out /root/out/e/offload 2>&1 | grep -v Warn | tail -30 | tee $OUT/offload.log
tar czf $OUT/e.tgz -C /root/out e
