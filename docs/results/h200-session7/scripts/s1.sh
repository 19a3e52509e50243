# session 7, call C1: Qwen2.5-Coder-0.5B answers through the graph with the Triton kernels (needle in prose,
# 16 samples per cell, ask and completion, 16K + 30K; processes side by side: times not clean)
bash .gpu/setup3.sh > $OUT/env.txt 2>&1
export ACTQKV_CACHE_DIR=/root/cache
M="--model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --device cuda --dtype bf16 --no-progress"
python -c "from actqkv_llm import Engine; Engine.from_pretrained('/root/m', gguf_file='qwen2.5-coder-0.5b-instruct-q4_k_m.gguf', device='cuda', dtype='bf16', progress=False)" > $OUT/convert.txt 2>&1
mkdir -p $OUT/q
(timeout 420 python -m actqkv_llm bench recall $M --variants actqkv --lengths 16K,30K --samples 16 --layout ask --no-meter --max-new-tokens 40 --out $OUT/q/ask > $OUT/q/ask.log 2>&1) &
(timeout 420 python -m actqkv_llm bench recall $M --variants actqkv --lengths 16K,30K --samples 16 --layout completion --no-meter --max-new-tokens 24 --out $OUT/q/comp > $OUT/q/comp.log 2>&1) &
wait
for f in $OUT/q/*.log; do echo "== $f"; tail -n 6 $f; done
