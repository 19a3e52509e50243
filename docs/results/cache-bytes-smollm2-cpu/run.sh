#!/bin/bash
# every step under the shared CPU lock, one at a time
set -x
M=/tmp/wt14-measure
T=/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/pyperformance/data-files/benchmarks/bm_docutils/data/docs/ref/rst/restructuredtext.txt
export OMP_NUM_THREADS=2
cd /tmp
PYTHONPATH=/work/wt14 /usr/bin/time -v python $M/samples.py /tmp/wt14-cache $M/samples.json 2> $M/samples.err
for v in v3:/work/wt14:/tmp/wt14-cache v2:/tmp/wt14-v2src:/tmp/wt14-cache v1:/tmp/wt14-v1src:/tmp/wt14-cache-v1; do
  IFS=: read name src cache <<< "$v"
  PYTHONPATH=$src /usr/bin/time -v python $M/measure.py $cache $M/passkey-$name.json passkey $M/samples.json > $M/passkey-$name.log 2>&1
done
for v in v3:/work/wt14:/tmp/wt14-cache v2:/tmp/wt14-v2src:/tmp/wt14-cache v1:/tmp/wt14-v1src:/tmp/wt14-cache-v1; do
  IFS=: read name src cache <<< "$v"
  PYTHONPATH=$src /usr/bin/time -v python $M/measure.py $cache $M/real-$name.json real $T > $M/real-$name.log 2>&1
done
echo done
