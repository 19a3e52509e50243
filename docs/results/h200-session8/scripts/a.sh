# session 8, call A: GPU tests at HEAD; the 8B shape with the new default (rerank 16) beside HF SDPA, reload from disk
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh 2>&1 | tee $OUT/env.txt
mkdir -p $OUT/a
timeout 200 python -m pytest -o addopts="" -q -p no:cacheprovider tests/test_gpu.py tests/test_tile_stats.py tests/test_static_decode.py -m "not slow" 2>&1 | tail -25 | tee $OUT/a/gpu-tests.txt
timeout 340 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --out $OUT/a/speed 2>&1 | grep -v Warn | tail -20 | tee $OUT/a/speed.log
