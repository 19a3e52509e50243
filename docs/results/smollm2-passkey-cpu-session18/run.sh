# Eighteenth session, 2-core CPU, fp32, alone (2026-12-05 12:08-12:41 UTC), tree 17735cb (main: the question reranks all candidates)
OMP_NUM_THREADS=2 python -m actqkv_llm bench quality --model smollm2 --device cpu --dtype fp32 --tasks passkey \
  --lengths 64K --samples 1 --methods actqkv --no-progress --out /tmp/smol64
