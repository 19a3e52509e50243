# session 11, call A: GPU tests with decode_compile on (the default on CUDA); probe13: the static
# step with and without decode_compile on the 8B shape at 32K
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
mkdir -p /root/out/a
timeout 260 python -m pytest -o addopts="" -q -p no:cacheprovider tests/test_gpu.py tests/test_tile_stats.py tests/test_static_decode.py -m "not slow" 2>&1 | tail -15 | tee $OUT/gpu-tests.txt
timeout 360 python .gpu/probe13.py 2>&1 | grep -v Warn | tee $OUT/probe13.txt
