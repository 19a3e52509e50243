# session 13, call D: Qwen2.5-Coder-0.5B needle in prose past what YaRN x4 covers (256K, 512K; 3 samples each)
# with the default of 3eb188c (unchanged since): ours and HF SDPA with YaRN x4, side by side on one GPU (times not clean)
set -u
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache PYTHONPATH=$PWD
bash .gpu/setup.sh > $OUT/env.txt 2>&1; python -c "import gguf, diskcache; print(gguf.__file__)" >> $OUT/env.txt 2>&1
mkdir -p /root/m && cat /root/parts/qwen.part.* > /root/m/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
(cd /root/m && sha256sum -c /root/parts/qwen.sha) 2>&1 | tee $OUT/sha.txt
git log --oneline | head -1 > $OUT/tree.txt
mkdir -p $OUT/d
M="--model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --device cuda --dtype bf16 --no-progress --no-meter --max-new-tokens 24"
(timeout 560 python -m actqkv_llm bench recall $M --variants actqkv --lengths 256K,512K --samples 3 --out $OUT/d/ours > $OUT/d/ours.log 2>&1) &
(timeout 560 python -m actqkv_llm bench recall $M --yarn 4 --variants hf --lengths 256K,512K --samples 3 --out $OUT/d/yarn > $OUT/d/yarn.log 2>&1) &
wait
for f in $OUT/d/ours.log $OUT/d/yarn.log; do echo "== $f"; grep -v -e Warn -e Converting $f | tail -n 12; done
