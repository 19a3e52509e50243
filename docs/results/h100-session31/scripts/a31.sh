# session 31, call A: the GPU tests on this tree (48ecffe's float32 decode tests never ran on a GPU)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
cat $OUT/env.txt
PYTHONPATH=$PWD timeout 200 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider --tb=short -rfs --durations=8 tests/ 2>&1 | grep -v Warn | tail -60 > $OUT/tests.txt
tail -25 $OUT/tests.txt
