# Seventeenth session, 2-core CPU, fp32, alone (2026-12-05 11:17-11:30 UTC), tree 7181024 (main: the question reranks all candidates)
OMP_NUM_THREADS=2 python -m actqkv_llm bench quality --model smollm2 --device cpu --dtype fp32 --tasks passkey \
  --lengths 32K --samples 1 --methods actqkv --no-progress --out /tmp/smol32
