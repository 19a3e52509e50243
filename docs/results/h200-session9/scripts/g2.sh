# session 9, call G2: the GPU's Gemma miss (128K depth 0): SDPA math backend; question reranks all 16x; rerank 8
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
R=/root/out/g2; mkdir -p $R
G="bench quality --model /root/gem --gguf-file gemma-3-270m-q4_k_m.gguf --device cuda --dtype fp32 --no-progress --tasks passkey --lengths 128K --depths 0 --samples 1 --methods actqkv"
(timeout 200 python -c "
import sys, torch
from torch.nn.attention import sdpa_kernel, SDPBackend
from actqkv_llm.cli import main
with sdpa_kernel([SDPBackend.MATH]):
    sys.exit(main(sys.argv[1:]))" $G --out $R/math > $R/math.log 2>&1) &
(timeout 200 python -m actqkv_llm $G -o question_rerank=16 --out $R/qr16 > $R/qr16.log 2>&1) &
(timeout 200 python -m actqkv_llm $G -o rerank=8 --out $R/rr8 > $R/rr8.log 2>&1) &
wait
for n in math qr16 rr8; do echo "== $n"; tail -3 $R/$n.log | grep -v Warn; python -c "
import json
for l in open('$R/$n/results.jsonl'): d=json.loads(l); print(d['correct'], repr(d.get('output'))[:50])" 2>&1 | tail -1; done | tee $OUT/g2.txt
