#!/usr/bin/env bash
# On a lent GPU machine (the device tool), from the repository root:
#   run(command="bash bench/device_agreement.sh", carry=[".cache/device-wheels"])
# after `make device-wheels` here. The image's python3 (3.12) carries jax 0.11.2 with its CUDA 13
# plugin and numpy 2.5.2; a job environment over it gets the few packages it lacks from the
# carried wheels, then bench/agreement.py prints, each twice: an exact spec's digests on that
# machine's CPU (cpu-portable) and on its GPU (gpu-portable), which must be equal, and the float
# gpu-exact profile's; or the refusal naming what differs from the profile.
set -euo pipefail
env=/tmp/crowdml-jobenv
python3 -m venv --system-site-packages "$env"
"$env/bin/pip" install --quiet --no-index --no-deps .cache/device-wheels/*.whl
stage=/tmp/crowdml-stage
mkdir -p "$stage"
ln -sfn "$PWD/crowdml_compute" "$stage/crowdml_compute"
ln -sfn "$PWD/jobs" "$stage/crowdml_jobs"
"$env/bin/python" -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|numpy|flax|optax|ml.dtypes|nvidia-(cuda-runtime|cudnn|cublas))' || true
PYTHONPATH="$stage" "$env/bin/python" -s bench/agreement.py --profiles cpu-portable gpu-portable gpu-exact
