python -m pip install --no-deps -q .whl/*.whl 2>&1 | tail -1
python -m pip install --no-deps --no-build-isolation -q -e . 2>&1 | tail -1
python -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__, torch.cuda.get_device_name())"
