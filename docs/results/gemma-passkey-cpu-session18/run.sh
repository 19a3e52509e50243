# Eighteenth session, 2-core CPU, fp32, GGUF sha256 a5fd3b62...6818. 64K: 12:41-12:59 UTC on the tree of 17735cb (what the process imported);
# 128K: 12:59-13:31 UTC on 501c0f6 (int8 host blocks added: an offload option these runs do not use; retrieval as b7c37a8: the question reranks all candidates).
# 64K ran beside short unit-test runs (OMP 1) and a SmolLM2 4K smoke run: its prefill times are not clean (one 361 s); 128K beside a few unit-test runs too.
set -x
date
cd /work/main
OMP_NUM_THREADS=2 python -m actqkv_llm bench quality --model /work/gem --gguf-file gemma-3-270m-q4_k_m.gguf --device cpu --dtype fp32 --tasks passkey --lengths 64K --samples 1 --methods actqkv --no-progress --out /tmp/gem64
echo rc=$?; date
OMP_NUM_THREADS=2 python -m actqkv_llm bench quality --model /work/gem --gguf-file gemma-3-270m-q4_k_m.gguf --device cpu --dtype fp32 --tasks passkey --lengths 128K --samples 1 --methods actqkv --no-progress --out /tmp/gem128
echo rc=$?; date
