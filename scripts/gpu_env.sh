# Sourced by the GPU scripts. On a machine without the package's requirements but with a CUDA torch, put their
# wheels in .whl/ (recbole, pandas<3, colorlog, texttable, thop, transformers>=5.23 and what it needs): they are
# installed to /tmp/site, and `ray` (which recbole.quick_start imports for HyperTuning only) is replaced by an
# empty module.
if ! python3 -c "import recbole, pandas, transformers" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  python3 -c "import ray" 2>/dev/null || { mkdir -p /tmp/site/ray && printf 'tune = None\n' > /tmp/site/ray/__init__.py; }
  export PYTHONPATH=/tmp/site:$PWD
fi
python3 -c "import torch, recbole; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'recbole', recbole.__version__)"
