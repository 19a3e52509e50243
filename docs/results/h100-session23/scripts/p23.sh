export PYTHONUNBUFFERED=1
{ bash .gpu/setup.sh; git log --oneline 2>/dev/null | head -1; git status --short; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 420 python .gpu/pf23.py 2>&1 | grep -v Warn | tee $OUT/pf23.txt
