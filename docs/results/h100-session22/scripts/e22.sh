# session 22, call E: pk22.py (steady-state prefill torch vs auto), the bound_mass tests again (the check's new shape)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; git log --oneline 2>/dev/null | head -1; git status --short; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 200 python .gpu/pk22.py 2>&1 | grep -v -i warn | tee $OUT/pk22.txt
PYTHONPATH=$PWD timeout 80 python -m pytest -o addopts="" -q -p no:cacheprovider --tb=short -rf tests/test_bound_mass.py 2>&1 | grep -v Warn | tail -8 | tee $OUT/tests.txt
