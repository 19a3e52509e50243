# session 12, call A: GPU tests at this tree; probe14 (per-step times by path, 32K, 1 and 8 rows)
# with the tree of d51e893 (before) and this tree (after), one process at a time
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 240 python -m pytest -o addopts="" -q -p no:cacheprovider tests/test_gpu.py tests/test_tile_stats.py tests/test_static_decode.py -m "not slow" 2>&1 | tail -6 | tee $OUT/gpu-tests.txt
echo "== before (d51e893)" | tee $OUT/probe14.txt
PYTHONPATH=$PWD/.gpu/old timeout 170 python .gpu/probe14.py 2>&1 | grep -v -e Warn -e "^  " | tee -a $OUT/probe14.txt
echo "== after (this tree)" | tee -a $OUT/probe14.txt
PYTHONPATH=$PWD timeout 170 python .gpu/probe14.py 2>&1 | grep -v -e Warn -e "^  " | tee -a $OUT/probe14.txt
