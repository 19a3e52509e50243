export PYTHONUNBUFFERED=1
python -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -1
PYTHONPATH=$PWD timeout 200 python .gpu/q34.py 2>&1 | grep -v "warn" | tee $OUT/q34.txt
