# session 6, call 2: prefill after (first chunk batched past its sinks, no host waits): GPU tests, profile, bench
bash .gpu/setup2.sh > $OUT/env.txt 2>&1; cat $OUT/env.txt
mkdir -p $OUT/s; export ACTQKV_CACHE_DIR=/root/cache
timeout 150 python -m pytest -o addopts="" -q -x tests/test_gpu.py tests/test_static_decode.py tests/test_chunk.py 2>&1 | tail -5 | tee $OUT/s/gpu-tests.txt
timeout 150 python .gpu/prof7.py 32768 131072 > $OUT/s/prof-prefill.txt 2>&1; grep -E "^(prefill|PREFILL)" $OUT/s/prof-prefill.txt
timeout 240 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --out $OUT/s/speed 2>&1 | tail -12 | tee $OUT/s/speed.log
