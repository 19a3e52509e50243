# session 25, call C: the GPU tests in full
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 560 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider --tb=short -rfs --durations=15 tests/ 2>&1 | grep -v Warn | tail -60 | tee $OUT/tests.txt
