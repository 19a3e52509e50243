# session 31, call E: where a step that scores again with static shapes spends its time (32K, 8B shape)
export PYTHONUNBUFFERED=1
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 240 python .gpu/p31.py 2>&1 | grep -v "Warn\|warn(" | tee $OUT/p31.txt | head -120
