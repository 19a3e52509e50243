# session 13, call E: segments for the steps that score again: GPU tests, then probe15 with the tree
# of 8404627 (before, .gpu/old) and with this tree (after), one process at a time
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
git log --oneline | head -1 > $OUT/tree.txt; git status --short >> $OUT/tree.txt
PYTHONPATH=$PWD timeout 270 python -m pytest -o addopts="" -q -p no:cacheprovider --tb=short -rf tests/test_gpu.py tests/test_tile_stats.py tests/test_static_decode.py -m "not slow" 2>&1 | grep -v Warn | tail -30 | tee $OUT/gpu-tests.txt
PYTHONPATH=$PWD/.gpu/old timeout 140 python .gpu/probe15.py 32768 $OUT/tokens-before.json 2>&1 | grep -v -e Warn -e "^  " | tee $OUT/probe15-before.txt
PYTHONPATH=$PWD timeout 140 python .gpu/probe15.py 32768 $OUT/tokens-after.json 2>&1 | grep -v -e Warn -e "^  " | tee $OUT/probe15-after.txt
python -c "import json,sys;a=json.load(open('$OUT/tokens-before.json'));b=json.load(open('$OUT/tokens-after.json'));print('row-0 tokens before == after:', {k: a[k]==b.get(k) for k in a})" | tee -a $OUT/probe15-after.txt
