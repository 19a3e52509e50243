# session 23, call G: the 32K prefill's synchronizing calls (sync23.py)
export PYTHONUNBUFFERED=1
{ bash .gpu/setup.sh; git status --short; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 200 python .gpu/sync23.py 2>&1 | grep -v "^  warnings.warn\|_warn_once" | tail -80 | tee $OUT/sync23.txt
