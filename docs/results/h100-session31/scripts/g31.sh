# session 31, call G: the GPU tests on the final tree; a document's first step that scores again (capture) against later ones
export PYTHONUNBUFFERED=1
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
cat $OUT/env.txt | tail -1
PYTHONPATH=$PWD timeout 220 python -m pytest -o addopts="" -m gpu -q -p no:cacheprovider --tb=short -rfs tests/ 2>&1 | grep -v Warn | tail -40 > $OUT/tests.txt
tail -3 $OUT/tests.txt
PYTHONPATH=$PWD timeout 150 python .gpu/cap.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/cap.txt
