# session 33, call C: p33.py (where a question read's host time goes), m32.py on the final tree (little device time left)
export PYTHONUNBUFFERED=1
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 90 python .gpu/p33.py 2>&1 | grep -v "warn" > $OUT/p33.txt
head -24 $OUT/p33.txt
NO_PROFILE=1 PYTHONPATH=$PWD timeout 110 python .gpu/m32.py 2>&1 | grep -v "warn" | tee $OUT/m32.txt | grep "^##\|same"
