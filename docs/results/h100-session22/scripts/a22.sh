# session 22, call A: compiled bound_mass tests + batched prefill GPU test; pk21.py: scoring alone and 8B prefills, torch vs triton
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1; git log --oneline 2>/dev/null | head -1 >> $OUT/env.txt; cat $OUT/env.txt
PYTHONPATH=$PWD timeout 80 python -m pytest -o addopts="" -q -p no:cacheprovider --tb=short -rf tests/test_bound_mass.py tests/test_gpu.py -k "compiled_passes or (batched_prefill and llama)" 2>&1 | grep -v Warn | tail -15 | tee $OUT/tests.txt
PYTHONPATH=$PWD timeout 220 python .gpu/pk21.py cuda 2>&1 | grep -v -i warn | tee $OUT/pk.txt
