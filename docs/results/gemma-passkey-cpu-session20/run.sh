# Twentieth session (2026-12-06), 2-core CPU, main at 03fac9b, one run at a time (after the Qwen 30K completion run of the same queue)
OMP_NUM_THREADS=2 python -m actqkv_llm bench quality --model gemma3-270m --device cpu --dtype fp32 --tasks passkey --lengths 64K --samples 1 --methods actqkv --no-progress --out /work/s20/gem64
OMP_NUM_THREADS=2 python -m actqkv_llm bench quality --model gemma3-270m --device cpu --dtype fp32 --tasks passkey --lengths 128K --samples 1 --methods actqkv --no-progress --out /work/s20/gem128
