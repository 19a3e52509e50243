# session 11, call C: decode_compile with the token's writes left eager (the compiled writes copied
# whole buffers, call B); GPU tests; probe13 (per-step times, compile on/off) and probe13b (kernels)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
timeout 230 python -m pytest -o addopts="" -q -p no:cacheprovider tests/test_gpu.py tests/test_tile_stats.py tests/test_static_decode.py -m "not slow" 2>&1 | tail -5 | tee $OUT/gpu-tests.txt
timeout 200 python .gpu/probe13.py 2>&1 | grep -v -e Warn -e Traceback -e "^  " -e RuntimeError | tee $OUT/probe13.txt
timeout 120 python .gpu/probe13b.py 2>&1 | grep -v Warn | tee $OUT/probe13b.txt
