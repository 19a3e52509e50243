# session 32, call A: GPU tests on the tree; answer_many's time by phase (m32.py), then unequal lengths without static scoring
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 200 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider --tb=short -rfs tests/ 2>&1 | tail -15 > $OUT/tests.txt
tail -3 $OUT/tests.txt
PYTHONPATH=$PWD timeout 200 python .gpu/m32.py 2>&1 | grep -v "warn" | tee $OUT/m32.txt
STATIC=0 FIRST_CASE=1 NO_PROFILE=1 PYTHONPATH=$PWD timeout 120 python .gpu/m32.py 2>&1 | grep -v "warn" | tee $OUT/m32-off.txt
