# session 21, call G (NOT RUN: no device time left): the batched prefill's block evidence, PyTorch ops against the Triton passes (bound_mass.py); copy with pk21.py to .gpu/
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1; git log --oneline 2>/dev/null | head -1 >> $OUT/env.txt
PYTHONPATH=$PWD timeout 70 python -m pytest -o addopts="" -q -p no:cacheprovider --tb=short -rf tests/test_bound_mass.py tests/test_gpu.py -k "compiled_passes or (batched_prefill and llama)" 2>&1 | grep -v Warn | tail -15 | tee $OUT/tests.txt
PYTHONPATH=$PWD timeout 150 python .gpu/pk21.py cuda 2>&1 | grep -v -i warn | tee $OUT/pk.txt
