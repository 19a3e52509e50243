# the GPU machine: the two pure-Python wheels it lacks, versions
python -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -2
python -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
