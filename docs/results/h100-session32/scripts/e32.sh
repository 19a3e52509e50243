# session 32, call E (little device time left): the decode graph's GPU tests only
export PYTHONUNBUFFERED=1
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 100 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider --tb=short -rfs tests/test_gpu.py -k "decode or rows or many" 2>&1 | tail -8 | tee $OUT/tests.txt
