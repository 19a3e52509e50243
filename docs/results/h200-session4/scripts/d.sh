# lease 1, call 1: Qwen in and past the window with the new default (16 samples per cell), side by side
bash .gpu/setup.sh > $OUT/env.txt 2>&1
export ACTQKV_CACHE_DIR=/root/cache
M="--model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --device cuda --dtype bf16 --no-progress"
python -c "from actqkv_llm import Engine; Engine.from_pretrained('/root/m', gguf_file='qwen2.5-coder-0.5b-instruct-q4_k_m.gguf', device='cuda', dtype='bf16', progress=False)" > $OUT/convert.txt 2>&1
mkdir -p $OUT/q
T=${T:-540}
(timeout $T python -m actqkv_llm bench recall $M --variants actqkv --lengths 16K,30K --samples 16 --layout ask --max-new-tokens 40 --document-every 100000 --out $OUT/q/ask > $OUT/q/ask.log 2>&1) &
(timeout $T python -m actqkv_llm bench recall $M --variants actqkv --lengths 16K,30K --samples 16 --layout completion --no-meter --max-new-tokens 24 --out $OUT/q/comp > $OUT/q/comp.log 2>&1) &
(timeout $T python -m actqkv_llm bench recall $M --variants actqkv --lengths 64K --samples 16 --layout completion --no-meter --max-new-tokens 24 --out $OUT/q/long64 > $OUT/q/long64.log 2>&1) &
(timeout $T python -m actqkv_llm bench recall $M --variants actqkv --lengths 128K --samples 16 --layout completion --no-meter --max-new-tokens 24 --out $OUT/q/long128 > $OUT/q/long128.log 2>&1) &
wait
cd $OUT && tar czf q.tgz q && rm -rf q
