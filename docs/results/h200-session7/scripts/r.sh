# session 7, call 2: GPU tests (rows, Triton mass/combine kernels), batch invariance of the dense parts,
# the static step in rows (probe), answer_many through bench speed
bash .gpu/setup2.sh > $OUT/env.txt 2>&1
mkdir -p $OUT/s; export ACTQKV_CACHE_DIR=/root/cache
timeout 170 python -m pytest -o addopts="" -q -p no:cacheprovider tests/test_gpu.py tests/test_tile_stats.py tests/test_static_decode.py -m "not slow" 2>&1 | tail -25 | tee $OUT/s/gpu-tests.txt
timeout 60 python .gpu/probe10.py 2>&1 | grep -v Warn | tee $OUT/s/probe10.txt
timeout 150 python .gpu/probe9.py 32768 2>&1 | grep -v Warn | tee $OUT/s/probe9.txt
timeout 200 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --no-baseline --no-reload --decode-tokens 32 --many 8 --out $OUT/s/many32 2>&1 | tail -14 | tee $OUT/s/many32.log
