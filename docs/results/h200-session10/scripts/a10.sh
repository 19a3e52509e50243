# session 10, call A: GPU tests with a new scoring inside the static decode step, then the 8B shape
# speed (reload cold from disk, answer_many of 8), one process at a time
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
mkdir -p /root/out/a
timeout 170 python -m pytest -o addopts="" -q -p no:cacheprovider tests/test_gpu.py tests/test_tile_stats.py tests/test_static_decode.py -m "not slow" 2>&1 | tail -15 | tee $OUT/gpu-tests.txt
timeout 390 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --many 8 --out /root/out/a/speed 2>&1 | grep -v Warn | tail -40 | tee $OUT/speed.log
tar czf $OUT/a.tgz -C /root/out a
