# session 12, call C: after inductor's tiling analysis was turned off for the scoring's compiled parts
# (call A's compile failed on torch 2.11 and fell back): GPU tests; probe14 with this tree
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache PYTHONPATH=$PWD
bash .gpu/setup.sh > $OUT/env.txt 2>&1
timeout 300 python -m pytest -o addopts="" -q -p no:cacheprovider tests/test_gpu.py tests/test_tile_stats.py tests/test_static_decode.py -m "not slow" 2>&1 | tail -4 | tee $OUT/gpu-tests.txt
echo "== after (this tree)" | tee $OUT/probe14.txt
timeout 200 python .gpu/probe14.py 2>&1 | grep -v -e Warn -e "^  " | tee -a $OUT/probe14.txt
