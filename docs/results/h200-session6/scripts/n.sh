# session 6, call 3: prefill v2 (GQA folded, one product for bounds, reserve): tests, bench, 128K profile
bash .gpu/setup2.sh > $OUT/env.txt 2>&1; cat $OUT/env.txt
mkdir -p $OUT/s; export ACTQKV_CACHE_DIR=/root/cache
timeout 150 python -m pytest -o addopts="" -q -x tests/test_gpu.py tests/test_static_decode.py tests/test_chunk.py tests/test_memory_and_budget.py 2>&1 | tail -5 | tee $OUT/s/gpu-tests.txt
timeout 260 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --out $OUT/s/speed 2>&1 | tail -12 | tee $OUT/s/speed.log
timeout 120 python .gpu/prof7.py 131072 > $OUT/s/prof-prefill128k.txt 2>&1; grep -E "^(prefill|PREFILL)" $OUT/s/prof-prefill128k.txt
