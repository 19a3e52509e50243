# session 9, call F1: GPU tests at HEAD (the question reads its share of the candidates' keys; peak by phase),
# then the 8B shape speed with the default (reload cold from disk), one process at a time
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
timeout 170 python -m pytest -o addopts="" -q -p no:cacheprovider tests/test_gpu.py tests/test_tile_stats.py tests/test_static_decode.py -m "not slow" 2>&1 | tail -15 | tee $OUT/gpu-tests.txt
timeout 360 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --out /root/out/f/speed 2>&1 | grep -v Warn | tail -40 | tee $OUT/speed.log
tar czf $OUT/f1.tgz -C /root/out f
