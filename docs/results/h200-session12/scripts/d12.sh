# session 12, call D: the final tree (b4627c8 + candidate slots from views made once, rotary tables per
# block, sinks kept on a reload after an eviction): GPU tests, then probe14 (per-step times by path)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache PYTHONPATH=$PWD
bash .gpu/setup.sh > $OUT/env.txt 2>&1
timeout 250 python -m pytest -o addopts="" -q -p no:cacheprovider --tb=line -rf tests/test_gpu.py tests/test_tile_stats.py tests/test_static_decode.py -m "not slow" 2>&1 | grep -v Warn | tail -8 | tee $OUT/gpu-tests.txt
timeout 120 python .gpu/probe14.py 2>&1 | grep -v -e Warn -e "^  " | tee $OUT/probe14.txt
