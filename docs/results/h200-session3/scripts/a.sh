# call A: setup, GPU tests, 8B-shape speed (default; reselect_every=32; offload)
bash .gpu/setup.sh 2>&1 | tee $OUT/env.txt
export ACTQKV_CACHE_DIR=/root/cache
mkdir -p $OUT/s
timeout 100 python -m pytest -o addopts="" -q tests/test_gpu.py 2>&1 | tail -15 | tee $OUT/gpu-tests.txt
timeout 300 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --out $OUT/s/main 2>&1 | tail -25 | tee $OUT/s/main.log
timeout 120 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-baseline --no-reload -o reselect_every=32 --out $OUT/s/every32 2>&1 | tail -12 | tee $OUT/s/every32.log
timeout 150 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 128K --no-baseline --no-reload -o offload=true --out $OUT/s/offload 2>&1 | tail -12 | tee $OUT/s/offload.log
cd $OUT && tar czf s.tgz s && rm -rf s
