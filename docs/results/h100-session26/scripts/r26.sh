# session 26, call R (tree: .gpu/TREE): the rotation kernel (queries and window keys rotated in one read and one write): bench speed 32K/128K beside HF SDPA; its GPU tests with the batched prefill's and the quality samples'; the tree before it (3b1d700, .gpu/old26b) without HF
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 200 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --out $OUT/speed 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed.log
timeout 90 python -m pytest -q -p no:cacheprovider -o addopts="" tests/test_rotation.py tests/test_gpu.py -k "rotation or batched_prefill or quality" 2>&1 | grep -v "arn" | tail -4 | tee $OUT/tests.txt
P=$PWD/.gpu/old26b; (cd $P && PYTHONPATH=$P timeout 110 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --no-baseline --decode-tokens 8 --out $OUT/speed-before 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed-before.log)
