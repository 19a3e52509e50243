# session 6, call 4a: Triton tile-stats kernel in the static decode step + prefill v2 + batched unit reads
bash .gpu/setup2.sh > $OUT/env.txt 2>&1; cat $OUT/env.txt
mkdir -p $OUT/s; export ACTQKV_CACHE_DIR=/root/cache
timeout 200 python -m pytest -o addopts="" -q tests/test_gpu.py tests/test_tile_stats.py tests/test_static_decode.py tests/test_chunk.py tests/test_block_reads.py -k "not interpreted" 2>&1 | tail -8 | tee $OUT/s/gpu-tests.txt
timeout 280 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --out $OUT/s/speed 2>&1 | tail -12 | tee $OUT/s/speed.log
