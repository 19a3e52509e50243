# session 22, call C: the default beside HF SDPA with the prefill scoring in the Triton passes (8B shape, bf16, 32K/128K), then the GPU tests
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; git log --oneline 2>/dev/null | head -1; git status --short; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 260 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload -o prefill_kernel=triton --out $OUT/speed 2>&1 | grep -v Warn | tee $OUT/speed.log
PYTHONPATH=$PWD timeout 290 python -m pytest -o addopts="" -q -p no:cacheprovider --tb=short -rf --durations=8 tests/test_gpu.py tests/test_tile_stats.py tests/test_static_decode.py tests/test_bound_mass.py -m "not slow" 2>&1 | grep -v Warn | tail -45 | tee $OUT/gpu-tests.txt
