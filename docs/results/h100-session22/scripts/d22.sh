# session 22, call D: scoring alone torch vs triton by memory size; bench speed with prefill_kernel's new default (auto) beside HF SDPA, then with torch; the bound_mass and batched prefill GPU tests
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; git log --oneline 2>/dev/null | head -1; git status --short; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 60 python .gpu/sw22.py 2>&1 | grep -v -i warn | tee $OUT/sweep.txt
PYTHONPATH=$PWD timeout 170 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --out $OUT/auto 2>&1 | grep -v Warn | tee $OUT/auto.log; rm -f $OUT/auto/speed.png
PYTHONPATH=$PWD timeout 100 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --no-baseline -o prefill_kernel=torch --out $OUT/torch 2>&1 | grep -v Warn | tee $OUT/torch.log; rm -f $OUT/torch/speed.png
PYTHONPATH=$PWD timeout 240 python -m pytest -o addopts="" -q -p no:cacheprovider --tb=short -rf --durations=5 tests/test_bound_mass.py tests/test_gpu.py -k "bound_mass or passes or batched_prefill" 2>&1 | grep -v Warn | tail -30 | tee $OUT/tests.txt
