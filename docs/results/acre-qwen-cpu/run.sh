cd /work/main
for T in niah_single niah_multivalue; do
  flock /tmp/cpu.lock python -m actqkv_llm bench recall --model /work/models --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --device cpu --dtype fp32 --no-progress --variants acre,actqkv --task $T --lengths 8K --samples 2 --layout ask --max-new-tokens 40 --document-every 100000 --out /tmp/acre/$T > /tmp/acre/$T.log 2>&1
done
