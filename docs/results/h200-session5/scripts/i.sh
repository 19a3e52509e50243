# session 5, call 2: graph decode v2 (one key buffer, bf16 products): tests, probe, 8B speed, many, eager
bash .gpu/setup2.sh > $OUT/env.txt 2>&1
mkdir -p $OUT/s /root/parts; cp .gguf-parts/q50/qwen.part.aa /root/parts/
export ACTQKV_CACHE_DIR=/root/cache
timeout 120 python -m pytest -o addopts="" -q -x tests/test_gpu.py tests/test_static_decode.py 2>&1 | tail -25 | tee $OUT/s/gpu-tests.txt
timeout 90 python .gpu/graph_probe.py 32768 2>&1 | tee $OUT/s/probe32k.txt
timeout 170 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --out $OUT/s/graph 2>&1 | tail -14 | tee $OUT/s/graph.log
timeout 100 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --no-baseline --no-reload --decode-tokens 32 --many 8 --out $OUT/s/many 2>&1 | tail -8 | tee $OUT/s/many.log
timeout 90 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-baseline --no-reload -o decode_graph=false --out $OUT/s/eager 2>&1 | tail -8 | tee $OUT/s/eager.log
cd $OUT && tar czf s.tgz s && rm -rf s
