# Sourced by the prepared GPU rounds (bench/gpu_round.sh, gpu_gan_streams.sh, gpu_gan_nhwc.sh,
# gpu_gan_defaults.sh, gpu_gan_members.sh): the carried site-packages and data under .gpu, the
# device and output folder, and what machine this is.
# Build .gpu once on this side (it is git-ignored; the device tool carries it):
#     mkdir -p .gpu/data/MNIST/raw && cp ../shared/data/MNIST/raw/*ubyte .gpu/data/MNIST/raw/
#     python3 -m pip install --target .gpu/site filelock tqdm pyyaml  # torchvision's MNIST; refill.py's space
# DEV, DATA and Q override the device, the data folder and bench_fused's speed flag (a CPU check).
set -u
export PYTHONPATH=$PWD:$PWD/.gpu/site
D=${DEV:-cuda}; DATA=${DATA:-.gpu/data}; O=${1:-$OUT}; Q=${Q:-"--quick"}
mkdir -p "$O"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python -c "import torch; print('torch', torch.__version__)"
