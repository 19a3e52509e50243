# session 25: SmolLM2-135M assembled from the carried parts, bench speed 8K/32K beside HF SDPA (the twenty-first session's command)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
cp .gguf-parts/s.ac /root/parts/ 2>/dev/null; mkdir -p /root/s && cat /root/parts/s.a? > /root/s/SmolLM2-135M-Instruct.Q4_1.gguf && sha256sum /root/s/SmolLM2-135M-Instruct.Q4_1.gguf | tee $OUT/smol-sha.txt
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 150 python -m actqkv_llm bench speed --model /root/s --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --device cuda --dtype bf16 --no-progress --lengths 8K,32K --no-reload --out $OUT/smol 2>&1 | grep -v Warn | tee $OUT/smol.log
timeout 60 python -m pytest -o addopts="" -q -p no:cacheprovider --tb=short tests/test_block_gather.py 2>&1 | tail -2 | tee $OUT/gather-tests.txt; rm -f $OUT/smol/speed.png
