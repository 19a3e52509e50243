# session 33, call C: p33.py (where a question read's host time goes)
export PYTHONUNBUFFERED=1
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 200 python .gpu/p33.py 2>&1 | grep -v "warn" > $OUT/p33.txt
head -30 $OUT/p33.txt
