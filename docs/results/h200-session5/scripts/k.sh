# session 5, call 4: Qwen2.5-Coder-0.5B after the rescoring rule change (candidates serve up to 2x their picks):
# recall of the reference path (meter), answers through the graph, speed graph vs reference vs HF
bash .gpu/carry.sh aj
bash .gpu/setup.sh > $OUT/env.txt 2>&1
export ACTQKV_CACHE_DIR=/root/cache
M="--model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --device cuda --dtype bf16 --no-progress"
python -c "from actqkv_llm import Engine; Engine.from_pretrained('/root/m', gguf_file='qwen2.5-coder-0.5b-instruct-q4_k_m.gguf', device='cuda', dtype='bf16', progress=False)" > $OUT/convert.txt 2>&1
mkdir -p $OUT/q
(timeout 330 python -m actqkv_llm bench recall $M --variants actqkv --lengths 16K,30K --samples 16 --layout ask --max-new-tokens 40 --document-every 100000 --out $OUT/q/ask-meter > $OUT/q/ask-meter.log 2>&1) &
(timeout 330 python -m actqkv_llm bench recall $M --variants actqkv --lengths 16K,30K --samples 16 --layout ask --no-meter --max-new-tokens 40 --out $OUT/q/ask > $OUT/q/ask.log 2>&1) &
(timeout 330 python -m actqkv_llm bench recall $M --variants actqkv --lengths 16K,30K --samples 16 --layout completion --no-meter --max-new-tokens 24 --out $OUT/q/comp > $OUT/q/comp.log 2>&1) &
wait
timeout 100 python -m actqkv_llm bench speed $M --lengths 8K,32K --no-reload --out $OUT/q/speed 2>&1 | tail -10 | tee $OUT/q/speed.log
timeout 60 python -m actqkv_llm bench speed $M --lengths 8K,32K --no-reload --no-baseline -o decode_graph=false --out $OUT/q/speed-ref 2>&1 | tail -6 | tee $OUT/q/speed-ref.log
for f in $OUT/q/*.log; do echo "== $f"; tail -n 4 $f; done
cd $OUT && tar czf q.tgz q && rm -rf q
