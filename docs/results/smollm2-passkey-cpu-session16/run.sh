# Sixteenth session, 2-core CPU, fp32, alone (2026-12-05 06:53-07:27 UTC): the second 64K sample of each depth,
# resumed into a copy of docs/results/smollm2-passkey-cpu-session10/ (whose five first samples ran at 829e05e);
# these five ran at e287d2e (main then). results.jsonl holds all ten.
cp -r docs/results/smollm2-passkey-cpu-session10 /work/scratch/smol64
OMP_NUM_THREADS=2 python -m actqkv_llm bench quality --model smollm2 --device cpu --dtype fp32 --tasks passkey \
  --lengths 64K --samples 2 --methods actqkv --no-progress --out /work/scratch/smol64
