# lease 1, call 2: 8B-shape speed, new default beside the selection before issue 11's second stage, one process at a time; GPU tests; decode profile
bash .gpu/setup.sh > $OUT/env-e.txt 2>&1
mkdir -p $OUT/s
timeout 80 python -m pytest -o addopts="" -q tests/test_gpu.py 2>&1 | tail -5 | tee $OUT/s/gpu-tests.txt
timeout 200 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --out $OUT/s/main 2>&1 | tail -14 | tee $OUT/s/main.log
timeout 120 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-baseline --no-reload -o rerank=1 -o keep_edges=false -o rescore_every=1 --out $OUT/s/rerank1 2>&1 | tail -12 | tee $OUT/s/rerank1.log
timeout 90 python .gpu/profile_decode.py 32768 > $OUT/s/profile32k.txt 2>&1
cd $OUT && tar czf s.tgz s && rm -rf s
