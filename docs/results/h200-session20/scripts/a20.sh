# session 20, call A: GPU tests at main, then the default beside actqkv-paper and HF SDPA (8B shape, bf16, 32K/128K)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; git log --oneline 2>/dev/null | head -1; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 230 python -m pytest -o addopts="" -q -p no:cacheprovider --tb=short -rf --durations=8 tests/test_gpu.py tests/test_tile_stats.py tests/test_static_decode.py -m "not slow" 2>&1 | grep -v Warn | tail -45 | tee $OUT/gpu-tests.txt
PYTHONPATH=$PWD timeout 300 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --methods actqkv,actqkv-paper --lengths 32K,128K --no-reload --out $OUT/speed 2>&1 | grep -v Warn | tee $OUT/speed.log
