# session 30, call D: the GPU tests on this tree (the rows test on random ids, sharpened attention in float32)
export PYTHONUNBUFFERED=1
python -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -2
echo "tree $(cat .gpu/TREE)" > $OUT/env.txt; nvidia-smi --query-gpu=name --format=csv,noheader >> $OUT/env.txt
PYTHONPATH=$PWD timeout 170 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider --tb=short -rfs tests/ 2>&1 | grep -v Warn | tail -40 > $OUT/tests.txt; tail -3 $OUT/tests.txt
