# call C: after the per-(block, head) device cache: GPU tests, offload at 128K, cold reload at 128K
bash .gpu/setup.sh > $OUT/env.txt 2>&1
mkdir -p $OUT/c
timeout 60 python -m pytest -o addopts="" -q tests/test_gpu.py 2>&1 | tail -5 | tee $OUT/c/gpu-tests.txt
timeout 190 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 128K --no-baseline --no-reload --decode-tokens 16 --repeats 1 -o offload=true --out $OUT/c/offload 2>&1 | tail -8 | tee $OUT/c/offload.log
timeout 230 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 128K --no-baseline --decode-tokens 16 --repeats 1 --out $OUT/c/reload 2>&1 | tail -12 | tee $OUT/c/reload.log
cd $OUT && tar czf c.tgz c && rm -rf c
