# session 27, call C: the GPU tests on this tree (the list-driven combine and values pass, the batched bounds); bench speed 32K,128K (no HF, no reload): decode after the new scoring's cuts
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
timeout 180 python -m pytest -q -o addopts="" -p no:cacheprovider -m gpu tests/ 2>&1 | tail -6 | tee $OUT/gpu-tests.txt
timeout 40 python -m pytest -q -o addopts="" -p no:cacheprovider tests/test_tile_stats.py -k compiled 2>&1 | tail -3 | tee $OUT/tile-tests.txt
PYTHONPATH=$PWD timeout 150 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-baseline --no-reload --out $OUT/speed 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed.log
