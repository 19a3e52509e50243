# session 27, call D (last of the budget): the GPU tests on this tree; bench speed 32K (no HF, no reload): decode after the new scoring's cuts
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
timeout 140 python -m pytest -q -o addopts="" -p no:cacheprovider tests/test_gpu.py tests/test_tile_stats.py -k "not interpreted" 2>&1 | tail -6 | tee $OUT/gpu-tests.txt
PYTHONPATH=$PWD timeout 85 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --no-baseline --no-reload --out $OUT/speed 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed.log
