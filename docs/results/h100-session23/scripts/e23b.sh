# session 23, call F: the block gather kernel: its tests and the batched-prefill / fast-path GPU tests; pf23b.py (profile of a 32K prefill, 128K); bench speed 32K/128K beside HF SDPA
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; git status --short; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 200 python -m pytest -o addopts="" -q -p no:cacheprovider --tb=short -rf --durations=5 tests/test_block_gather.py tests/test_bound_mass.py tests/test_gpu.py -k "gather or bound or batched_prefill or fast_path or variant" 2>&1 | grep -v Warn | tail -25 | tee $OUT/tests.txt
PYTHONPATH=$PWD timeout 150 python .gpu/pf23b.py 2>&1 | grep -v Warn | tee $OUT/pf23b.txt
PYTHONPATH=$PWD timeout 200 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --out $OUT/speed 2>&1 | grep -v Warn | tee $OUT/speed.log
