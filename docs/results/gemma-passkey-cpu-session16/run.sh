# Sixteenth session, 2-core CPU, main at 6c1623e (retrieval as 0902036), GGUF sha256 a5fd3b62...6818.
# The 64K run was first started alone at 05:54 UTC under `timeout 900`, which stopped it after 4 of its
# 5 samples (each ~155-190 s); the script below resumed it (the fifth sample) and then ran 128K.
# The resumed 64K sample and the 128K depth-0 sample (595 s prefill) ran beside a 5-minute unit-test run; the others alone.
set -x
date
OMP_NUM_THREADS=2 python -m actqkv_llm bench quality --model /work/gem --gguf-file gemma-3-270m-q4_k_m.gguf --device cpu --dtype fp32 --tasks passkey --lengths 64K --samples 1 --methods actqkv --no-progress --out /work/scratch/gem64
echo rc=$?; date
OMP_NUM_THREADS=2 python -m actqkv_llm bench quality --model /work/gem --gguf-file gemma-3-270m-q4_k_m.gguf --device cpu --dtype fp32 --tasks passkey --lengths 128K --samples 1 --methods actqkv --no-progress --out /work/scratch/gem128
echo rc=$?; date
