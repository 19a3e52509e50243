# 1M tokens on the 8B shape, one GPU of the x2 host (host memory for the offloaded KV: 256 GB)
python -m pip install --no-deps -q .whl/*.whl 2>&1 | tail -1
python -m pip install --no-deps --no-build-isolation -q -e . 2>&1 | tail -1
free -g | tee $OUT/free.txt
export CUDA_VISIBLE_DEVICES=0
timeout 380 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --lengths 1M --no-baseline --no-reload --decode-tokens 8 --repeats 1 --warmup-tokens 1024 -o offload=true --out $OUT/m1 2>&1 | tr '\r' '\n' | grep -v "^ *$" | tail -30 | tee $OUT/m1.log
