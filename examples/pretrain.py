"""Pre-train a PTUM user model with Accelerate (same as `ptum-hf pretrain`).

python examples/pretrain.py --dataset synthetic --num_users 2000 --output_dir outputs/pretrain
python examples/pretrain.py my_run.json              # arguments from a JSON or YAML file
ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 examples/pretrain.py --dataset synthetic ...
"""

import sys

from ptum_hf.cli import cmd_pretrain

if __name__ == "__main__":
    cmd_pretrain(sys.argv[1:])
